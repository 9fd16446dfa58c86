"""aloware-sync: agent-managed call lists (spec/outbound.md §1.10, rules L-0…L-4).

Runs under the contact's lock. Memberships (``contact_list_memberships``) are the record of
what we put on which list, so an add that is already active and a removal of something not on
a list do nothing (LP-2): redeliveries and replays change no list twice. Aloware can only
remove a contact from *all* power-dialer lists at once, so a removal is followed by re-adding
every list the contact still actively belongs to.

A permanent failure of one list (no such list in Aloware, the endpoint refused) is logged and
the next list is tried (L-2 step 3). A rate limit or outage (``RetryLater``) is not swallowed:
the event is retried and the change happens then (ARCHITECTURE.md invariant 6). Every write
is ordered so that a retry finds what the failed attempt left and finishes it, once: a
membership row is set only after Aloware took the change (an add already made is not made
again), a removal is marked only after the other lists were restored, and the agent state
row (L-3) is written only after its steps, so a retry takes the same branch again.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts.envelope import WebhookEvent
from services.clients.ghl import GhlContact
from services.domain import optout, store
from services.domain.call_lists import (
    Agent,
    ContactView,
    has_legacy_marker,
    list_intent,
    list_name,
    resolve_agent,
)
from services.domain.contact import ghl_to_canonical
from services.infra.db.models import (
    AgentDirectoryRow,
    CallListRegistryRow,
    ContactAgentStateRow,
    ContactListMembershipRow,
    ContactMappingRow,
)
from services.infra.delivery import Outcome
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger
from services.tooling.agents import AgentField

if TYPE_CHECKING:
    from services.aloware_sync.optouts import OptOut
    from services.aloware_sync.service import AlowareSync

log = get_logger(__name__)
DISABLED = "Power Dialer lists are temporarily disabled"
OPTED_OUT = "Contact is opted out, cannot add to lists"
CACHE_S = 600


class ListRules:
    """L-0…L-4 for one aloware-sync process."""

    def __init__(self, sync: AlowareSync) -> None:
        self.sync = sync
        self.settings = sync.settings
        self.engine = sync.engine
        self._users: tuple[float, dict[str, str]] = (0.0, {})
        self._stages: tuple[float, dict[str, str]] = (0.0, {})
        self.agent_field = AgentField(sync.ghl, self.settings.ghl_assigned_agent_field_key)

    # --- entry points ----------------------------------------------------------------------
    async def on_event(self, event: WebhookEvent, attempt: int, contact: GhlContact | None, *,
                       echo: bool = False) -> Outcome:
        """L-3 → L-1 → L-2 for GHL contact, tag and pipeline events.

        ``echo``: the event is our own write coming back (LP-1), which changes no list (R1).
        The echo ledger covers the fields we write (names, e-mail, phone, address, tags), not
        the owner or the agent field, which we never write: a human who reassigned the contact
        in GHL within the echo window sends an event that hashes like our write. So an echo
        still runs L-3's reassignment when the agent resolved now differs from the recorded
        one. Every other list effect of an echo (the event's own intent, the first placement
        of a contact we created) is dropped and the outcome stays ``echo``; a contact seen
        for the first time still gets its ``contact_agent_state`` row, so the sequences (S-7)
        and a later reassignment find its agent."""
        if not self.settings.enable_agent_list_sync:
            return Outcome("skipped", "agent_list_sync_disabled")
        ghl_id = contact_id(event)
        common = {"direction": "ghl_to_aloware", "entity_type": "list", "source_id": ghl_id,
                  "correlation_id": str(event.event_id), "attempt": attempt}
        if contact is None:
            contact = await self.sync.ghl.get_contact(ghl_id)
        if contact is None:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="L", message="ghl_contact_not_found",
                                     started_at=datetime.now(UTC), **common)
            return Outcome("skipped", "ghl_contact_not_found")
        canonical = ghl_to_canonical(contact, self.settings.default_phone_region)
        view = ContactView(contact.assigned_to, await self._user_email(contact.assigned_to),
                           await self.agent_field.value(contact), tuple(contact.tags))
        key = store.contact_lock_key(canonical.phone, ghl_id=ghl_id)
        async with store.contact_lock(self.engine, key) as conn:
            agents = await self._agents(conn)
            agent, reason = resolve_agent(agents, view, self.settings.default_agent_key)
            opted_out = await optout.is_opted_out(conn, canonical.phone)
            details = {"agent": agent, "agent_reason": reason, "legacy_marker": has_legacy_marker(contact.tags)}
            state = (await conn.execute(select(ContactAgentStateRow).where(ContactAgentStateRow.contact_id == ghl_id))).first()
            if echo and (state is None or state.agent_key == agent):
                if state is None:  # the agent is remembered (S-7 and a later reassignment read it), no list changes
                    await conn.execute(pg_insert(ContactAgentStateRow).values(contact_id=ghl_id, agent_key=agent)
                                       .on_conflict_do_nothing(index_elements=["contact_id"]))
                return Outcome("echo", "middleware-originated")
            keys = list(self.settings.agent_list_keys)
            mode = self.settings.tag_match_mode
            changed = lambda: list_intent("contact.changed", {}, contact.tags, opted_out=opted_out,  # noqa: E731
                                          list_keys=keys, mode=mode)
            steps: list[tuple[str, list[str], list[str], str]] = []  # (agent, add, remove, suffix)
            reassigned_from = None
            # written after the steps: a retry (RetryLater mid-way) must see the old state and
            # redo the reassignment or new-agent step, whose finished parts are then no-ops
            state_write: Any
            if state is not None and state.agent_key != agent and event.canonical_type not in ("tag.added", "tag.removed"):
                reassigned_from = state.agent_key
                old_keys = await self._active_keys(conn, ghl_id, state.agent_key)
                add, _ = changed()
                steps += [(state.agent_key, [], old_keys, "-reassign-remove"), (agent, add, [], "-reassign-add")]
                state_write = (update(ContactAgentStateRow).where(ContactAgentStateRow.id == state.id)
                               .values(agent_key=agent, updated_at=datetime.now(UTC)))
            else:
                if state is None:
                    state_write = (pg_insert(ContactAgentStateRow).values(contact_id=ghl_id, agent_key=agent)
                                   .on_conflict_do_nothing(index_elements=["contact_id"]))
                    add, _ = changed()
                    steps.append((agent, add, [], "-new-agent"))
                else:
                    state_write = (update(ContactAgentStateRow).where(ContactAgentStateRow.id == state.id)
                                   .values(updated_at=datetime.now(UTC)))
                stage = await self._stage(event) if event.canonical_type in ("opportunity.statusChanged",
                                                                              "pipeline.stageChanged") else None
                add, remove = list_intent(event.canonical_type, event.payload, contact.tags, opted_out=opted_out,
                                          list_keys=keys, mode=mode, stage=stage)
                steps.append((agent, add, remove, ""))
            results = []
            for step_agent, add, remove, suffix in steps:
                results.append(await self.apply(conn, event, attempt, ghl_id, canonical.phone, step_agent, add,
                                                remove, opted_out, suffix, details))
            await conn.execute(state_write)
        if reassigned_from:
            log.info("contact_reassigned", ghl_contact_id=ghl_id, old=reassigned_from, new=agent)
        changed_any = any(r == "applied" for r in results)
        return Outcome("applied") if changed_any else Outcome("skipped", results[-1] if results else "no_list_change")

    # --- R3 / O-5: the opt-out itself ------------------------------------------------------
    async def remove_opted_out(self, event: WebhookEvent, attempt: int, opt_out: OptOut, *,
                               ghl_id: str | None = None, aloware_id: str | None = None) -> Outcome:
        """An opted-out number off every call list when the opt-out arrives (STOP, Aloware
        DNC, GHL DND), not at the contact's next GHL event, which may never come (R3, O-5;
        L-2 step 4 with every key of every agent, so nothing is re-added).

        ``opt_out`` is recorded in the registry first, with the arguments ghl-sync's rule for
        the same event uses (O-1 is idempotent per event), so whichever consumer gets there
        first, the registry says opted out before the lists are touched and a concurrent
        contact event adds nothing back (O-5b); with ``record=False`` the caller has
        recorded it. The removal acts on the registry's verdict (O-4: a stale opt-out
        changes nothing) and on our memberships (LP-2: a replay, or a number never on one of
        our lists, calls nothing): every live GHL contact with the number, plus ``ghl_id``,
        that has an active membership has its Aloware contact (and ``aloware_id``, the DNC
        event's own) taken off all power-dialer lists at once, the only removal Aloware has,
        which for an opt-out is what we want. Memberships are marked ``removed`` (reason
        ``opted_out``) only after Aloware took the removal, so a retry finds them active and
        removes again."""
        if not self.settings.enable_agent_list_sync:
            return Outcome("ignored", "agent_list_sync_disabled")
        if not self.settings.enable_power_dialer_lists:
            return Outcome("ignored", DISABLED)
        phone, started = opt_out.phone, datetime.now(UTC)
        if opt_out.record and not opt_out.under_lock:
            async with self.engine.begin() as conn:
                await opt_out.write(conn, event)
        async with store.contact_lock(self.engine, phone) as conn:
            if opt_out.record and opt_out.under_lock:
                await opt_out.write(conn, event)
            if not await optout.is_opted_out(conn, phone):
                return Outcome("ignored", "not_opted_out")
            mappings = (await conn.execute(select(ContactMappingRow.ghl_contact_id, ContactMappingRow.aloware_contact_id)
                                           .where(ContactMappingRow.ghl_deleted_at.is_(None), or_(
                                               ContactMappingRow.phone_number == phone,
                                               ContactMappingRow.ghl_contact_id == (ghl_id or ""))))).all()
            ghl_ids = {m.ghl_contact_id for m in mappings} | ({ghl_id} if ghl_id else set())
            active = (await conn.execute(select(ContactListMembershipRow).where(
                ContactListMembershipRow.contact_id.in_(sorted(ghl_ids)), ContactListMembershipRow.status == "active"))).all()
            if not active:  # LP-2: nothing of ours to take off (a replay, or never on a list)
                return Outcome("ignored", "not_on_any_list")
            listed = sorted({row.contact_id for row in active})
            aloware_ids = sorted({str(m.aloware_contact_id) for m in mappings
                                  if m.aloware_contact_id and m.ghl_contact_id in listed}
                                 | ({aloware_id} if aloware_id else set()))
            if not aloware_ids:  # L-2 step 2: the lists hold an Aloware contact we cannot name yet
                raise RetryLater(None, f"Could not resolve Aloware contact ID for GHL contact {listed[0]}")
            for alo in aloware_ids:
                await self.sync.aloware.remove_from_all_lists(alo)
            for row in active:
                await self._membership(conn, row.contact_id, row.agent_key, row.list_key, "removed", "opted_out")
            names = ", ".join(list_name(r.agent_key, r.list_key) for r in active)
            for alo in aloware_ids:
                await store.log_sync(conn, direction="ghl_to_aloware", entity_type="list", rule="L-2",
                                     source_id=listed[0], target_id=alo, status="success",
                                     message=f"removed from {names}",
                                     details={"trigger": event.canonical_type, "opted_out": True},
                                     started_at=started, correlation_id=str(event.event_id), attempt=attempt)
        return Outcome("applied")

    # --- L-2 -------------------------------------------------------------------------------
    async def apply(self, conn: Any, event: WebhookEvent, attempt: int, ghl_id: str, phone: str | None,
                    agent: str, add: list[str], remove: list[str], opted_out: bool, suffix: str,
                    details: dict[str, Any]) -> str:
        """One membership change; "applied" when a list changed, else the reason nothing did."""
        common = {"direction": "ghl_to_aloware", "entity_type": "list", "source_id": ghl_id,
                  "correlation_id": f"{event.event_id}{suffix}", "attempt": attempt, "details": details}
        started = datetime.now(UTC)
        if not add and not remove:
            return "no_list_change"
        if not self.settings.enable_power_dialer_lists:
            await store.log_sync(conn, status="skipped", rule="L-2", message=DISABLED, started_at=started, **common)
            return DISABLED
        if opted_out:  # O-5b: never an addition; removals still go through
            await store.log_sync(conn, status="skipped", rule="L-2", message=OPTED_OUT, started_at=started, **common)
            add = []
        add = [k for k in add if not await self._is_active(conn, ghl_id, agent, k)]
        remove = [k for k in remove if await self._is_active(conn, ghl_id, agent, k)]
        if not add and not remove:
            return "already_in_place"
        aloware_id = await self._aloware_id(conn, ghl_id)
        changed = False
        for key in add:  # RetryLater propagates: the adds made so far have their rows already
            try:
                list_id = await self.ensure_call_list(conn, agent, key)
                await self.sync.aloware.add_to_list(list_id, aloware_id)
            except Permanent as exc:
                await store.log_sync(conn, status="error", rule="L-2", started_at=started,
                                     message=f"Failed to add to list {agent}/{key}: {exc}", **common)
                continue
            await self._membership(conn, ghl_id, agent, key, "active", "added")
            await store.log_sync(conn, status="success", rule="L-2", target_id=list_id, started_at=started,
                                 message=f"added to {list_name(agent, key)}", **common)
            changed = True
        if remove:
            registered = {r.list_key: r.aloware_list_id for r in (await conn.execute(select(CallListRegistryRow).where(
                CallListRegistryRow.agent_key == agent, CallListRegistryRow.list_key.in_(remove)))).all()}
            if any(registered.get(k) for k in remove):
                # the removal is marked only once the other lists are back: a RetryLater here
                # leaves the keys active, so the retry removes and restores again (A4 empties
                # every list first, so no list gets the contact twice)
                keep = [(a, k) for a, k in await self._all_active(conn, ghl_id) if not (a == agent and k in remove)]
                await self.sync.aloware.remove_from_all_lists(aloware_id)
                for other_agent, other_key in keep:  # A4 removed them all
                    try:
                        await self.sync.aloware.add_to_list(await self.ensure_call_list(conn, other_agent, other_key),
                                                            aloware_id)
                    except Permanent as exc:
                        await store.log_sync(conn, status="error", rule="L-2", started_at=started,
                                             message=f"Failed to re-add {other_agent}/{other_key}: {exc}", **common)
            for key in remove:
                await self._membership(conn, ghl_id, agent, key, "removed", "removed")
            await store.log_sync(conn, status="success", rule="L-2", started_at=started,
                                 message=f"removed from {', '.join(list_name(agent, k) for k in remove)}", **common)
            changed = True
        return "applied" if changed else "no_list_change"

    async def ensure_call_list(self, conn: Any, agent: str, key: str) -> str:
        """L-4: the registry's list id, else Aloware's list of that name (case-insensitive)."""
        row = (await conn.execute(select(CallListRegistryRow).where(
            CallListRegistryRow.agent_key == agent, CallListRegistryRow.list_key == key))).first()
        if row is not None and row.aloware_list_id:
            return str(row.aloware_list_id)
        name = list_name(agent, key)
        found = next((item for item in await self.sync.aloware.call_lists()
                      if str(item.get("name", "")).lower() == name.lower()), None)
        if found is None:
            raise Permanent(f'Call list "{name}" not found in Aloware; create it manually')
        values = {"aloware_list_id": str(found["id"]), "aloware_list_name": str(found["name"]),
                  "updated_at": datetime.now(UTC)}
        await conn.execute(pg_insert(CallListRegistryRow).values(agent_key=agent, list_key=key, **values)
                           .on_conflict_do_update(index_elements=["agent_key", "list_key"], set_=values))
        return str(found["id"])

    # --- helpers ---------------------------------------------------------------------------
    async def _aloware_id(self, conn: Any, ghl_id: str) -> str:
        mapping = await store.mapping_by_ghl(conn, ghl_id)
        if mapping is not None and mapping.aloware_contact_id:
            return str(mapping.aloware_contact_id)
        raise RetryLater(None, f"Could not resolve Aloware contact ID for GHL contact {ghl_id}")

    async def _agents(self, conn: Any) -> list[Agent]:
        rows = (await conn.execute(select(AgentDirectoryRow).where(AgentDirectoryRow.is_active.is_(True))
                                   .order_by(AgentDirectoryRow.agent_key))).all()
        return [Agent(r.agent_key, r.ghl_owner_id, r.ghl_owner_email, r.ghl_assigned_agent_field_value,
                      r.required_tag) for r in rows]

    async def _is_active(self, conn: Any, ghl_id: str, agent: str, key: str) -> bool:
        status = await conn.scalar(select(ContactListMembershipRow.status).where(
            ContactListMembershipRow.contact_id == ghl_id, ContactListMembershipRow.agent_key == agent,
            ContactListMembershipRow.list_key == key))
        return status == "active"

    async def _active_keys(self, conn: Any, ghl_id: str, agent: str) -> list[str]:
        rows = (await conn.execute(select(ContactListMembershipRow.list_key).where(
            ContactListMembershipRow.contact_id == ghl_id, ContactListMembershipRow.agent_key == agent,
            ContactListMembershipRow.status == "active"))).all()
        return [r.list_key for r in rows]

    async def _all_active(self, conn: Any, ghl_id: str) -> list[tuple[str, str]]:
        rows = (await conn.execute(select(ContactListMembershipRow.agent_key, ContactListMembershipRow.list_key).where(
            ContactListMembershipRow.contact_id == ghl_id, ContactListMembershipRow.status == "active"))).all()
        return [(r.agent_key, r.list_key) for r in rows]

    async def _membership(self, conn: Any, ghl_id: str, agent: str, key: str, status: str, reason: str) -> None:
        values = {"status": status, "reason": reason, "updated_at": datetime.now(UTC)}
        await conn.execute(pg_insert(ContactListMembershipRow).values(contact_id=ghl_id, agent_key=agent, list_key=key,
                                                                   **values)
                           .on_conflict_do_update(index_elements=["contact_id", "agent_key", "list_key"], set_=values))

    async def _user_email(self, user_id: str | None) -> str | None:
        if not user_id:
            return None
        at, users = self._users
        if time.monotonic() - at > CACHE_S:
            try:  # RetryLater propagates: an empty map would resolve the wrong agent (L-0) for 10 min
                users = {str(u.get("id")): str(u.get("email") or "") for u in await self.sync.ghl.list_users()}
            except Permanent as exc:
                log.warning("ghl_users_unavailable", error=str(exc))
                users = {}
            self._users = (time.monotonic(), users)
        return users.get(user_id) or None

    async def _stage(self, event: WebhookEvent) -> str | None:
        payload = event.payload
        for field in ("pipelineStage", "stage", "status"):
            value = payload.get(field)
            if isinstance(value, str) and value:
                return value
        stage_id = payload.get("pipelineStageId")
        if not stage_id:
            return None
        at, stages = self._stages
        if time.monotonic() - at > CACHE_S:
            stages = await self.sync.ghl.pipeline_stages()
            self._stages = (time.monotonic(), stages)
        return stages.get(str(stage_id))


def contact_id(event: WebhookEvent) -> str:
    """The GHL contact a contact, tag or opportunity event is about."""
    payload = event.payload
    contact = payload.get("contact") if isinstance(payload.get("contact"), dict) else {}
    for value in (payload.get("contactId"), contact.get("id")):
        if isinstance(value, str) and value:
            return value
    return event.entity_id

