"""Performs the plans of GHL-writing rules (``rules/ops.py``): the one place where a rule's
operations meet PostgreSQL and the vendors.

It owns what makes an effect happen once and be visible: the effect-claim keys, derived from
the source event's ids (``note:aloware:<kind>:<source id>``, ``m1:<texting message id>``;
contacts: ``contacts.contact_claim_key``), the echo ledger entries of tag writes, and the
``sync_log`` rows (with the attempt, the correlation id and the context's ``now``).

Connections: until a plan takes the contact lock (``LockContact``), each operation runs in a
transaction of its own; from then on every operation runs on the lock's connection, whose
statements commit at once (``services.domain.store.contact_lock``), and the lock is released
when the plan ends, however it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.streams import GHL_SYNC
from services.domain import optout, store
from services.domain.rules import RuleContext
from services.ghl_sync import message_rows
from services.ghl_sync.broadcast_figures import BroadcastFigures
from services.ghl_sync.contacts import GhlContacts, known_mapping
from services.ghl_sync.rules import ops
from services.ghl_sync.rules.ops import Done, LogSync, Operation, Plan
from services.ghl_sync.writes import GhlWrites, TagChange
from services.infra.db.models import GhlObjectRecordMappingRow
from services.infra.delivery import Outcome
from services.infra.errors import Permanent

__all__ = [
    "CONTACT_EVENT_TYPES",
    "GhlExecutor",
    "message_key",
    "note_key",
    "pending_contact_sync",
    "read_contact_event",
]

# the Aloware events the CA rule runs on (``routes.ROUTES``): the ones that can supersede each other
CONTACT_EVENT_TYPES = ("contact.created", "contact.updated")


def note_key(kind: str, source_id: str) -> str:
    """The effect claim of one activity's note (CL-3, AR-4)."""
    return f"note:aloware:{kind}:{source_id}"


async def read_contact_event(
    conn: AsyncConnection, op: ops.ReadContactEvent, event: WebhookEvent, echo_window_s: int
) -> ops.ContactEventState:
    """``ReadContactEvent`` for ``event``: the echo ledger, the mapping and the event ledger
    (``webhook_events``) in one statement."""
    newer = None
    if op.event_at is not None:
        newer = store.NewerQuery(
            source=event.source.value,
            entity_type=event.entity_type.value,
            entity_id=event.entity_id or op.aloware_id,
            canonical_types=CONTACT_EVENT_TYPES,
            consumer=GHL_SYNC.owner,  # both lanes record their deliveries as ghl-sync
            event_id=event.event_id,
            received_at=event.received_at,
            event_at=op.event_at,
        )
    echo, mapping, found = await store.contact_event_state(conn, op.aloware_id, op.field_hash, echo_window_s, newer)
    return ops.ContactEventState(echo, known_mapping(mapping), str(found) if found is not None else None)


async def pending_contact_sync(conn: AsyncConnection, aloware_id: str) -> str | None:
    """``FindPendingContactSync``: any Aloware contact event of ``aloware_id`` ghl-sync has still
    to run (every one is "newer" than the start of time)."""
    waiting = await store.newer_pending_event(
        conn,
        source="aloware",
        entity_type="contact",
        entity_id=aloware_id,
        canonical_types=CONTACT_EVENT_TYPES,
        consumer=GHL_SYNC.owner,
        event_id=_NO_EVENT,
        received_at=_DAWN,
        event_at=_DAWN,
    )
    return str(waiting) if waiting is not None else None


_NO_EVENT = UUID(int=0)
_DAWN = datetime.min.replace(tzinfo=UTC)


def message_key(texting_message_id: str | None, event_key: str) -> str:
    """The effect claim of one texting message in GHL (M-1): its id, else its event's key."""
    return f"m1:{texting_message_id or 'event:' + event_key}"


class _Attempt:
    """One plan's run: its event, context and (once taken) the contact lock's connection."""

    def __init__(self, engine: AsyncEngine, event: WebhookEvent, ctx: RuleContext, stack: AsyncExitStack) -> None:
        self.engine = engine
        self.event = event
        self.ctx = ctx
        self.stack = stack
        self.locked: AsyncConnection | None = None

    def conn(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """The lock's connection, else a transaction of its own."""
        return _borrowed(self.locked) if self.locked is not None else self.engine.begin()


@asynccontextmanager
async def _borrowed(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    yield conn


class GhlExecutor:
    """Runs plans against PostgreSQL, GHL (through ``GhlContacts`` and ``GhlWrites``) and
    Verity's database (``BroadcastFigures``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        contacts: GhlContacts,
        writes: GhlWrites,
        figures: BroadcastFigures,
        *,
        echo_window_s: int,
    ) -> None:
        self.engine = engine
        self.contacts = contacts
        self.writes = writes
        self.figures = figures
        self.echo_window_s = echo_window_s

    async def run(self, plan: Plan, event: WebhookEvent, ctx: RuleContext) -> Outcome:
        """Perform ``plan``'s operations in order, each answer sent back into the plan."""
        async with AsyncExitStack() as stack:
            attempt = _Attempt(self.engine, event, ctx, stack)
            answer: Any = None
            try:
                while True:
                    operation = plan.send(answer)
                    answer = await self.perform(operation, attempt)
            except StopIteration as stop:
                done: Done = stop.value
            finally:
                plan.close()
        return Outcome(done.outcome, done.reason)

    async def _log(self, conn: AsyncConnection, row: LogSync, attempt: _Attempt) -> None:
        await store.log_sync(
            conn,
            direction=row.direction,
            entity_type=row.entity_type,
            source_id=row.source_id,
            status=row.status,
            started_at=attempt.ctx.now,
            correlation_id=str(attempt.event.event_id),
            rule=row.rule,
            attempt=attempt.ctx.attempt,
            target_id=row.target_id,
            message=row.message,
            details=dict(row.details) if row.details is not None else None,
        )

    async def _ledger(self, conn: AsyncConnection, ghl_id: str, change: TagChange) -> list[str]:
        """LP-1: the tag write's result goes into the echo ledger, and its tags into the
        mapping's snapshot (a later write from the snapshot then hashes what GHL has)."""
        if change.after_hashes:
            await store.record_tag_write(conn, ghl_id, change.after_hashes, change.present, change.absent)
        return change.tags

    async def perform(self, op: Operation, attempt: _Attempt) -> Any:
        """One operation; the answer its docstring in ``rules/ops.py`` names. Operations
        that need no database run without a connection of their own."""
        match op:
            case ops.LockContact():
                if attempt.locked is not None:
                    raise RuntimeError("a plan takes one contact lock")
                attempt.locked = await attempt.stack.enter_async_context(store.contact_lock(self.engine, op.key))
                return None
            case ops.LookupAlowareContact():
                return await self.contacts.aloware_contact(
                    op.aloware_id, op.phone, dict(op.embedded) if op.embedded else None
                )
            case ops.ReportMessageStatus():
                await self.writes.report_status(op.ghl_message_id, op.status, op.error)
                return None
            case ops.ReadBroadcastFigures():
                return await self.figures.read(op.broadcast_id)
        async with attempt.conn() as conn:
            return await self._perform_on(conn, op, attempt)

    async def _perform_on(self, conn: AsyncConnection, op: Operation, attempt: _Attempt) -> Any:
        ctx, event = attempt.ctx, attempt.event
        match op:
            case ops.LogSync():
                await self._log(conn, op, attempt)
                return None
            case ops.ReadContactEvent():
                return await read_contact_event(conn, op, event, self.echo_window_s)
            case ops.FindLiveMapping(aloware_id=aloware_id, phone=phone):
                return await self.contacts.live(conn, aloware_id, phone, ctx.region)
            case ops.FindPendingContactSync(aloware_id=aloware_id):
                return await pending_contact_sync(conn, aloware_id)
            case ops.ResolveContact():
                return await self.contacts.find_or_create(conn, op.contact, ctx, direction=op.direction)
            case ops.ResolveTextingContact():
                return await self.contacts.texting_contact(conn, op.phone, ctx.region)
            case ops.SyncGhlContact():
                return await self.contacts.upsert_from_aloware(conn, op.contact, op.mapping, op.event_at, ctx)
            case ops.PostNoteOnce():
                return await self.writes.note_once(
                    conn,
                    note_key(op.kind, op.source_id),
                    event_id=event.event_id,
                    kind=op.kind,
                    source_id=op.source_id,
                    ghl_id=op.ghl_id,
                    text=op.text,
                )
            case ops.AddTags():
                # only under a contact lock (a texting status holds none: it reads GHL as before)
                believed = (
                    await self.contacts.trusted_snapshot(conn, op.ghl_id, ctx)
                    if op.tags and attempt.locked is not None
                    else None
                )
                change = await self.writes.add_missing_tags(op.ghl_id, op.tags, ctx.region, believed)
                return await self._ledger(conn, op.ghl_id, change)
            case ops.RemoveTags():
                change = await self.writes.remove_present_tags(op.ghl_id, op.tags, ctx.region)
                return await self._ledger(conn, op.ghl_id, change)
            case ops.RecordOptOut():
                return await optout.record(
                    conn, op.phone, op.status, op.source, op.reason, at=op.at, event_id=event.event_id
                )
            case ops.ResolveConversation():
                return await self.writes.conversation(conn, op.ghl_id)
            case ops.FindSyncedMessage():
                return await message_rows.synced_message(conn, op.texting_message_id)
            case ops.FindOutboundEcho():
                return await message_rows.outbound_echo(conn, op.ids, op.to_number, op.body_sha256, op.since)
            case ops.LinkTextingMessage():
                await message_rows.link_texting_id(conn, op.row_id, op.texting_message_id)
                return None
            case ops.FindAgentMessage():
                return await message_rows.agent_message(conn, op.ids)
            case ops.PostMessageOnce():
                return await self._message_once(conn, op, attempt)
            case ops.RecordDeliveryStatus():
                await message_rows.record_delivery_status(conn, op.row_id, op.status)
                return None
            case ops.FindObjectRecord():
                return await self._object_record(conn, op)
            case ops.UpsertObjectRecord():
                return await self._upsert_record(conn, op)
        raise Permanent(f"ghl-sync cannot perform {type(op).__name__}")

    async def _message_once(self, conn: AsyncConnection, op: ops.PostMessageOnce, attempt: _Attempt) -> str:
        async def log_error(message: str) -> None:
            await self._log(conn, op.log.row("error", "M-1", target_id=op.ghl_id, message=message), attempt)

        return await self.writes.message_once(
            conn,
            message_key(op.texting_message_id, op.event_key),
            op,
            event_id=attempt.event.event_id,
            log_error=log_error,
        )

    @staticmethod
    async def _object_record(conn: AsyncConnection, op: ops.FindObjectRecord) -> ops.ObjectRecord | None:
        row = (
            await conn.execute(
                select(GhlObjectRecordMappingRow).where(
                    GhlObjectRecordMappingRow.object_key == op.object_key,
                    GhlObjectRecordMappingRow.external_id == op.external_id,
                )
            )
        ).first()
        return ops.ObjectRecord(str(row.ghl_record_id), row.updated_at) if row is not None else None

    async def _upsert_record(self, conn: AsyncConnection, op: ops.UpsertObjectRecord) -> str:
        record_id = await self.writes.upsert_record(op.object_key, op.known_record_id, op.external_id, op.properties)
        # when the recomputation finished: events received before it are coalesced (B-5)
        values = {"ghl_record_id": record_id, "updated_at": datetime.now(UTC)}
        await conn.execute(
            pg_insert(GhlObjectRecordMappingRow)
            .values(object_key=op.object_key, external_id=op.external_id, **values)
            .on_conflict_do_update(index_elements=["object_key", "external_id"], set_=values)
        )
        return record_id
