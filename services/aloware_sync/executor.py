"""The one place aloware-sync's rules touch the world: it drives a planner's flow
(``rules/ops.py``), performing each operation against Aloware, GHL and PostgreSQL and
sending the answer back.

It owns what every rule needs done the same way: the contact lock (``HoldContactLock``), the
echo ledger (each write to Aloware or GHL is recorded with the projection it leaves, LP-1),
the ``sync_log`` rows (time, attempt and correlation id of the delivery) and the call-list
registry (L-4). A vendor refusal (``Permanent``) is thrown into the flow at the operation
that met it; anything else ends the flow and reaches the delivery shell as it is.

Outside the lock each write commits on its own (``engine.begin()``); under it, every
statement goes through the lock's autocommit connection (``store.contact_lock``), so a
vendor write that succeeded is never "forgotten" by a later failure in the same rule.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.envelope import WebhookEvent
from services.aloware_sync import state
from services.aloware_sync.ghl_reads import GhlReads
from services.aloware_sync.rules.known import LIMIT_ECHO_WINDOW_S
from services.aloware_sync.rules.ops import (
    AddToList,
    CreateAlowareContact,
    DisenrollSequences,
    EnrollSequence,
    Flow,
    HoldContactLock,
    Inform,
    IsEcho,
    LinkText,
    LogSync,
    LookupAlowareContact,
    MarkGhlDeleted,
    MarkMembership,
    Operation,
    ReadAgentState,
    ReadAgentView,
    ReadGhlContact,
    ReadListState,
    ReadMapping,
    ReadOptOutListings,
    ReadStage,
    RecordListStatus,
    RecordOptOut,
    ReleaseContactLock,
    RemoveFromAllLists,
    UpdateAlowareContact,
    UpsertMapping,
    WriteAgentState,
    WriteBackToGhl,
)
from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient
from services.domain import optout, store
from services.domain.call_lists import list_name
from services.domain.contact import aloware_to_canonical, ghl_to_canonical
from services.domain.rules import RuleContext
from services.infra.db.models import (
    CallListRegistryRow,
    ContactAgentStateRow,
    ContactListMembershipRow,
    ContactMappingRow,
    MessageMappingRow,
)
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger

__all__ = ["AlowareExecutor", "drive"]

log = get_logger(__name__)
T = TypeVar("T")
DEFAULT_ECHO_WINDOW_S = 600.0


async def drive(flow: Flow[T], perform: Callable[[Operation], Awaitable[Any]]) -> T:
    """Run ``flow`` to its end: each yielded operation is performed and its answer sent back;
    a ``Permanent`` it raised is thrown in instead. The flow's return value is returned."""
    answer: Any = None
    refused: Permanent | None = None
    try:
        while True:
            try:
                operation = flow.throw(refused) if refused is not None else flow.send(answer)
            except StopIteration as stop:
                result: T = stop.value
                return result
            answer, refused = None, None
            try:
                answer = await perform(operation)
            except Permanent as exc:
                refused = exc
    finally:
        flow.close()


class _Attempt:
    """One flow's run: the event, its context and the contact lock it holds, if any."""

    def __init__(self, engine: AsyncEngine, event: WebhookEvent, ctx: RuleContext) -> None:
        self.engine = engine
        self.event = event
        self.ctx = ctx
        self._lock: AsyncExitStack | None = None
        self._key: str | None = None
        self.locked: AsyncConnection | None = None

    async def hold(self, key: str) -> None:
        """The lock of ``key``, the one held released first; holding it already is a no-op."""
        if self._lock is not None and key == self._key:
            return
        await self.release()
        lock = AsyncExitStack()
        self.locked = await lock.enter_async_context(store.contact_lock(self.engine, key))
        self._lock, self._key = lock, key

    async def release(self) -> None:
        lock, self._lock, self._key, self.locked = self._lock, None, None, None
        if lock is not None:
            await lock.aclose()

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        """The lock's connection, else a transaction of its own."""
        if self.locked is not None:
            yield self.locked
        else:
            async with self.engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        if self.locked is not None:
            yield self.locked
        else:
            async with self.engine.connect() as conn:
                yield conn


class AlowareExecutor:
    """Performs aloware-sync's operations for one process."""

    def __init__(self, engine: AsyncEngine, aloware: AlowareClient, ghl: GhlClient, reads: GhlReads) -> None:
        self._engine = engine
        self._aloware = aloware
        self._ghl = ghl
        self._reads = reads

    async def run(self, flow: Flow[T], event: WebhookEvent, ctx: RuleContext) -> T:
        """Drive ``flow`` for one delivery attempt of ``event``; the lock is released at the end."""
        attempt = _Attempt(self._engine, event, ctx)
        try:
            return await drive(flow, lambda operation: self._perform(attempt, operation))
        finally:
            await attempt.release()

    async def _perform(self, run: _Attempt, op: Operation) -> Any:
        ctx = run.ctx
        match op:
            case ReadGhlContact(ghl_id=ghl_id):
                return await self._reads.contact(ghl_id)
            case ReadAgentView(contact=contact):
                return await self._reads.view(contact)
            case ReadStage(payload=payload):
                return await self._reads.stage(payload)
            case LookupAlowareContact(phone=phone):
                return await self._aloware.lookup_by_phone(phone)
            case IsEcho():
                window = int(ctx.limit(LIMIT_ECHO_WINDOW_S, DEFAULT_ECHO_WINDOW_S))
                async with run.reading() as conn:
                    return await store.is_echo(conn, op.system, op.entity_id, op.projection, window)
            case ReadMapping():
                async with run.reading() as conn:
                    return await state.mapping(conn, ghl_id=op.ghl_id, aloware_id=op.aloware_id, phone=op.phone)
            case ReadListState(ghl_id=ghl_id, phone=phone):
                async with run.reading() as conn:
                    return await state.list_state(conn, ghl_id, phone)
            case ReadOptOutListings(phone=phone, ghl_id=ghl_id):
                async with run.reading() as conn:
                    return await state.opt_out_listings(conn, phone, ghl_id)
            case ReadAgentState(ghl_id=ghl_id):
                async with run.reading() as conn:
                    return await state.agent_state(conn, ghl_id)
            case HoldContactLock(phone=phone, ghl_id=ghl_id):
                await run.hold(store.contact_lock_key(phone, ghl_id=ghl_id))
                return None
            case ReleaseContactLock():
                await run.release()
                return None
            case CreateAlowareContact():
                return await self._create(run, op)
            case UpdateAlowareContact():
                await self._aloware.upsert_contact(op.form, force_update=True)
                if op.aloware_id:
                    async with run.writing() as conn:
                        await store.record_write(conn, "aloware", op.aloware_id, op.expected.projection_hash())
                return None
            case WriteBackToGhl(fields=fields, ghl_id=ghl_id):
                if not ghl_id:
                    raise ValueError("WriteBackToGhl needs the GHL contact id")
                updated = await self._ghl.update_contact(ghl_id, fields)
                if updated is not None:
                    async with run.writing() as conn:
                        await store.record_write(
                            conn, "ghl", ghl_id, ghl_to_canonical(updated, ctx.region).ghl_write_hashes()
                        )
                return updated
            case AddToList(agent=agent, list_key=key, aloware_id=aloware_id):
                async with run.writing() as conn:
                    list_id = await self._call_list(conn, agent, key)
                await self._aloware.add_to_list(list_id, aloware_id)
                return list_id
            case RemoveFromAllLists(aloware_id=aloware_id):
                return await self._aloware.remove_from_all_lists(aloware_id)
            case EnrollSequence(sequence_id=sequence_id, phone=phone):
                return await self._aloware.enroll_sequence(sequence_id, phone)
            case DisenrollSequences(phone=phone):
                await self._aloware.disenroll_sequences(phone)
                return None
            case UpsertMapping():
                async with run.writing() as conn:
                    await store.upsert_mapping(
                        conn,
                        ghl_id=op.ghl_id,
                        aloware_id=op.aloware_id,
                        phone=op.phone,
                        email=op.email,
                        direction=op.direction,
                        ghl_event_at=op.ghl_event_at,
                        ghl_snapshot=op.ghl_snapshot,
                    )
                return None
            case MarkMembership():
                values = {"status": op.status, "reason": op.reason, "updated_at": datetime.now(UTC)}
                async with run.writing() as conn:
                    await conn.execute(
                        pg_insert(ContactListMembershipRow)
                        .values(contact_id=op.contact_id, agent_key=op.agent, list_key=op.list_key, **values)
                        .on_conflict_do_update(index_elements=["contact_id", "agent_key", "list_key"], set_=values)
                    )
                return None
            case WriteAgentState():
                await self._agent_state(run, op)
                return None
            case RecordListStatus(state_id=state_id, status=status):
                async with run.writing() as conn:
                    await conn.execute(
                        update(ContactAgentStateRow)
                        .where(ContactAgentStateRow.id == state_id)
                        .values(last_aloware_list_status=status, updated_at=datetime.now(UTC))
                    )
                return None
            case RecordOptOut():
                async with run.writing() as conn:
                    return await optout.record(
                        conn, op.phone, op.status, op.source, op.reason, at=op.at, event_id=run.event.event_id
                    )
            case MarkGhlDeleted(ghl_id=ghl_id):
                async with run.writing() as conn:
                    await store.mark_ghl_deleted(conn, ghl_id)
                return None
            case LinkText():
                await self._link_text(run, op)
                return None
            case LogSync():
                async with run.writing() as conn:
                    await store.log_sync(
                        conn,
                        direction=op.direction,
                        entity_type=op.entity_type,
                        source_id=op.source_id,
                        status=op.status,
                        started_at=ctx.now,
                        correlation_id=f"{run.event.event_id}{op.correlation_suffix}",
                        rule=op.rule,
                        attempt=ctx.attempt,
                        target_id=op.target_id,
                        message=op.message,
                        details=op.details,
                    )
                return None
            case Inform(event=name, fields=fields):
                log.info(name, **fields)
                return None
        raise TypeError(f"not an aloware-sync operation: {op!r}")

    async def _create(self, run: _Attempt, op: CreateAlowareContact) -> Any:
        """CG-3 (d): the Lead API answers no id, so the new contact is looked up by phone."""
        await self._aloware.upsert_contact(op.form, force_update=False)
        phone = op.expected.phone
        record = await self._aloware.lookup_by_phone(phone) if phone else None
        if record is None:
            raise RetryLater(None, "Aloware contact not found right after create")
        async with run.writing() as conn:
            await store.record_write(
                conn, "aloware", record.id, aloware_to_canonical(record, run.ctx.region).projection_hash()
            )
        return record

    async def _call_list(self, conn: AsyncConnection, agent: str, key: str) -> str:
        """L-4: the registry's list id, else Aloware's list of that name (case-insensitive),
        registered; a list Aloware does not have is a refusal (created by hand)."""
        row = (
            await conn.execute(
                select(CallListRegistryRow).where(
                    CallListRegistryRow.agent_key == agent, CallListRegistryRow.list_key == key
                )
            )
        ).first()
        if row is not None and row.aloware_list_id:
            return str(row.aloware_list_id)
        name = list_name(agent, key)
        found = next(
            (item for item in await self._aloware.call_lists() if str(item.get("name", "")).lower() == name.lower()),
            None,
        )
        if found is None:
            raise Permanent(f'Call list "{name}" not found in Aloware; create it manually')
        values = {
            "aloware_list_id": str(found["id"]),
            "aloware_list_name": str(found["name"]),
            "updated_at": datetime.now(UTC),
        }
        await conn.execute(
            pg_insert(CallListRegistryRow)
            .values(agent_key=agent, list_key=key, **values)
            .on_conflict_do_update(index_elements=["agent_key", "list_key"], set_=values)
        )
        return str(found["id"])

    async def _agent_state(self, run: _Attempt, op: WriteAgentState) -> None:
        async with run.writing() as conn:
            if op.state_id is None:
                await conn.execute(
                    pg_insert(ContactAgentStateRow)
                    .values(contact_id=op.ghl_id, agent_key=op.agent)
                    .on_conflict_do_nothing(index_elements=["contact_id"])
                )
                return
            values: dict[str, Any] = {"updated_at": datetime.now(UTC)}
            if op.reassign:
                values["agent_key"] = op.agent
            await conn.execute(
                update(ContactAgentStateRow).where(ContactAgentStateRow.id == op.state_id).values(**values)
            )

    async def _link_text(self, run: _Attempt, op: LinkText) -> None:
        async with run.writing() as conn:
            if op.message_id:
                await conn.execute(
                    pg_insert(MessageMappingRow)
                    .values(
                        texting_message_id=op.message_id,
                        aloware_contact_id=op.aloware_id,
                        direction=op.direction,
                    )
                    .on_conflict_do_update(
                        index_elements=["texting_message_id"],
                        set_={
                            "aloware_contact_id": func.coalesce(MessageMappingRow.aloware_contact_id, op.aloware_id),
                            "updated_at": func.now(),
                        },
                    )
                )
            await conn.execute(
                update(ContactMappingRow)
                .where(ContactMappingRow.phone_number == op.phone, ContactMappingRow.aloware_contact_id.is_(None))
                .values(aloware_contact_id=op.aloware_id, updated_at=func.now())
            )
