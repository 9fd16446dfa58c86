"""ghl-sync: rules whose write target is GHL. Implemented so far: CA (Aloware contact
created/updated → GHL contact) with echo suppression, ordering and per-contact locking;
calls and call artifacts (CL, AR), disposition (D-2), Aloware DNC (D-1) and the texting
opt-out event (O-2) in ``activity.py``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads.aloware import AlowareContactEvent
from contracts.streams import ALOWARE_SYNC
from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.domain import effects, store
from services.domain.contact import (
    FIELDS,
    GHL_NAMES,
    CanonicalContact,
    aloware_to_canonical,
    custom_pairs,
    ghl_to_canonical,
)
from services.ghl_sync import sequences
from services.ghl_sync.activity import CALL_TYPES, ActivityRules
from services.ghl_sync.broadcasts import BroadcastRules
from services.ghl_sync.messages import MessageRules
from services.ghl_sync.rules.activity import KIND_OF_CANONICAL
from services.ghl_sync.rules.contact import (
    CreateGhlContact,
    CustomFieldIds,
    KnownGhlContact,
    Plan,
    UpdateGhlContact,
    custom_fields,
    plan_contact_upsert,
)
from services.infra.db.models import EventDeliveryRow, WebhookEventRow
from services.infra.delivery import Outcome
from services.infra.errors import OutcomeUnknown, Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.trace import is_replay

SOT_SKIP = "aloware_contact_event_ignored_source_of_truth_is_ghl"
CONTACT_EFFECT = "ghl.contact"
# the GHL events after which CG re-reads the contact and refreshes the mapping's snapshot
SNAPSHOT_REFRESHING_EVENTS = ("contact.created", "contact.updated", "contact.tags_changed")
SNAPSHOT_VERIFIED = Counter(
    "dfm_ghl_snapshot_verified_total",
    "GHL snapshots CA read GHL for before diffing (one GET each), by why the snapshot was in doubt",
    ["reason"])
SNAPSHOT_MISSED = Counter(
    "dfm_ghl_snapshot_missed_total",
    "GHL changes our snapshot lacked, found by a verify read or in a write's answer", ["found_by"])


@dataclass(frozen=True)
class _Replan:
    """GHL changed under the plan: drop the mapping and/or re-read ``ghl_id``, then re-plan
    (from ``known`` when the answer to a write already showed GHL's state; ``wrote``: that
    write happened)."""

    ghl_id: str
    drop_mapping: bool = False
    reread: bool = False
    known: KnownGhlContact | None = None
    wrote: bool = False

log = get_logger(__name__)


def _same_person(key: str, ghl: CanonicalContact, incoming: CanonicalContact) -> bool:
    """Whether the contact a claim created still stands for the key's person: always for an
    Aloware id; for a phone or e-mail key while GHL still has that phone or e-mail."""
    if key.startswith("ghl_contact:aloware:"):
        return True
    if key.startswith("ghl_contact:phone:"):
        return ghl.phone == incoming.phone
    return (ghl.email or "").lower() == (incoming.email or "").lower()


def _missed_besides(believed: CanonicalContact, answer: CanonicalContact, sent: dict[str, Any]) -> bool:
    """Whether GHL's answer to our PUT differs from what we believed in a field we did not
    write: GHL held a change our snapshot lacked (a GHL webhook lost or not yet applied).
    Fields we wrote are left out, so GHL normalising a value we sent is no such change."""
    written = {name for name, ghl_name in GHL_NAMES.items() if ghl_name in sent}
    for name in FIELDS:
        if name in written:
            continue
        had, has = getattr(believed, name), getattr(answer, name)
        if name == "email":
            had, has = (had or "").lower() or None, (has or "").lower() or None
        if had != has:
            return True
    return {t.lower() for t in believed.tags} != {t.lower() for t in answer.tags}


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class GhlSync:
    """Dispatches events to GHL-writing rules."""

    def __init__(self, settings: Settings, engine: AsyncEngine, ghl: GhlClient,
                 aloware: AlowareClient | None = None, conversations: GhlConversations | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.ghl = ghl
        self.aloware = aloware  # CL-1's phone lookup; without a token the call's own data is used
        self.activity = ActivityRules(self)
        self.messages = MessageRules(self, conversations)
        self.broadcasts = BroadcastRules(self)
        self.cf_ids = CustomFieldIds(settings.ghl_cf_aloware_contact_id, settings.ghl_cf_lead_source,
                                     settings.ghl_cf_intake_source)

    async def aclose(self) -> None:
        """Close what the rules opened (the Verity database pool)."""
        await self.broadcasts.aclose()

    async def _fault_pause(self) -> None:
        """Fault-test hook: hold the rule between the vendor write and the ack."""
        if self.settings.dfm_fault_pause_after_vendor_write_s:
            log.warning("fault_pause_after_vendor_write",
                        seconds=self.settings.dfm_fault_pause_after_vendor_write_s)
            await asyncio.sleep(self.settings.dfm_fault_pause_after_vendor_write_s)

    async def _known_by_id(self, ghl_id: str) -> KnownGhlContact | None:
        current = await self.ghl.get_contact(ghl_id)
        if current is None:
            return None
        return KnownGhlContact(ghl_id, ghl_to_canonical(current, self.settings.default_phone_region))

    async def _known_from_mapping(self, conn: Any, mapping: Any,
                                  customs: list[dict[str, str]]) -> KnownGhlContact | None:
        """CA-2 (a): the mapped contact, from our snapshot while it can be trusted (no GHL
        call), else from GHL: one GET, whose answer becomes the new snapshot. A contact
        deleted in GHL since drops the mapping (then search and create)."""
        if mapping is None:
            return None
        snapshot = CanonicalContact.from_snapshot(mapping.ghl_snapshot) if mapping.ghl_snapshot else None
        doubt = (await self._snapshot_doubt(conn, mapping.ghl_contact_id, snapshot, customs)
                 if snapshot is not None else "no_snapshot")
        if snapshot is not None and doubt is None:
            return KnownGhlContact(mapping.ghl_contact_id, snapshot, from_snapshot=True)
        SNAPSHOT_VERIFIED.labels(doubt).inc()
        known = await self._known_by_id(mapping.ghl_contact_id)
        if known is None:
            await store.drop_mapping(conn, mapping.ghl_contact_id)
            return None
        if snapshot is not None and snapshot.projection_hash() != known.contact.projection_hash():
            SNAPSHOT_MISSED.labels("verify_read").inc()
            log.info("ghl_snapshot_stale", ghl_contact_id=mapping.ghl_contact_id, reason=doubt)
            return replace(known, missed=True)
        return known

    async def _snapshot_doubt(self, conn: Any, ghl_id: str, snapshot: CanonicalContact,
                              customs: list[dict[str, str]]) -> str | None:
        """Why the mapping's snapshot may not be GHL's current state, or None to trust it.

        Only CG refreshes a snapshot from GHL's side: it re-reads the contact after each GHL
        contact webhook. So the snapshot is in doubt when that cannot have happened: a
        replay (asked for to re-check GHL), the GHL → Aloware direction switched off, a
        contact without phone (CG-2 skips those), custom fields CA-6 needs but the snapshot
        predates, a GHL contact webhook recorded since that CG has not absorbed (pending,
        failed, skipped), or an age past ``GHL_SNAPSHOT_MAX_AGE_S``, which bounds how long a
        webhook GHL never sent goes unnoticed. The checks cost no vendor call."""
        if is_replay():
            return "replay"
        if not self.settings.sync_ghl_contacts_to_aloware:
            return "ghl_to_aloware_off"
        if not snapshot.phone:
            return "no_phone"
        if customs and snapshot.custom_fields is None:
            return "custom_fields_unknown"
        seen = snapshot.seen_at
        if seen is None or (datetime.now(UTC) - seen).total_seconds() > self.settings.ghl_snapshot_max_age_s:
            return "age"
        if await self._ghl_event_since(conn, ghl_id, seen):
            return "ghl_event_not_applied"
        return None

    @staticmethod
    async def _ghl_event_since(conn: Any, ghl_id: str, seen: datetime) -> bool:
        """A GHL contact event for ``ghl_id`` recorded after ``seen`` that aloware-sync did
        not find to be an echo of ours (an echo shows the state we wrote and snapshotted)."""
        row = WebhookEventRow
        echo = exists().where(EventDeliveryRow.event_id == row.id, EventDeliveryRow.consumer == ALOWARE_SYNC.durable,
                              EventDeliveryRow.outcome == "echo")
        found = await conn.execute(select(row.id).where(
            row.source == "ghl", row.entity_type == "contact", row.entity_id == ghl_id,
            row.canonical_type.in_(SNAPSHOT_REFRESHING_EVENTS), row.received_at > seen, ~echo).limit(1))
        return found.first() is not None

    async def _known_from_search(self, incoming: CanonicalContact) -> KnownGhlContact | None:
        """CA-2 (b), (c): GHL's duplicate lookup by phone, then by e-mail."""
        found = await self.ghl.find_duplicate(phone=incoming.phone) if incoming.phone else None
        if found is None and incoming.email:
            found = await self.ghl.find_duplicate(email=incoming.email)
        return await self._known_by_id(found) if found else None

    async def _create_once(self, conn: Any, key: str | None, fields: dict[str, Any],
                           incoming: CanonicalContact) -> tuple[str, bool]:
        """G3 under the effect claim ``key`` (``services/domain/effects.py``): (GHL id,
        created). Only the attempt holding the claim creates; a contact this key created
        before is reused while GHL still has it (recreated once it is deleted there). When a
        create's answer is lost, GHL's duplicate search is asked before the outcome is called
        ``unknown``; an unknown create is never repeated automatically. Without any key (no
        Aloware id, phone or e-mail) GHL cannot find the contact again either: plain G3."""
        if key is None:
            return await self.ghl.create_contact(fields)
        held = await effects.claim(conn, key, CONTACT_EFFECT, event_id=None,
                                   ttl_s=self.settings.dfm_effect_claim_ttl_s)
        if isinstance(held, effects.Settled) and held.state == "done" and held.vendor_id:
            known = await self._known_by_id(held.vendor_id)
            if known is not None and _same_person(key, known.contact, incoming):
                return known.ghl_id, False
            reopened = await effects.reopen(conn, key, held.vendor_id, event_id=None,
                                            ttl_s=self.settings.dfm_effect_claim_ttl_s)
            if reopened is None:
                raise RetryLater(None, f"{key}: claim changed while reopening it")
            held = reopened
        elif isinstance(held, effects.Settled):
            found = await self._search_quietly(incoming)
            if found is None:
                raise OutcomeUnknown(f"GHL contact create for {key} ({held.detail}); check GHL, then resolve "
                                     f"the claim {key}")
            await effects.done(conn, key, found)
            return found, False
        try:
            ghl_id, created = await self.ghl.create_contact(fields)
        except Exception as exc:
            if not effects.may_have_landed(exc):
                await effects.release(conn, held)
                raise
            found = await self._search_quietly(incoming)  # the answer was lost: does GHL have it?
            if found is None:
                reason = exc.reason if isinstance(exc, (RetryLater, Permanent)) else type(exc).__name__
                await effects.unknown(conn, key, reason)
                raise OutcomeUnknown(f"GHL contact create for {key}: {reason}; check GHL, then resolve the "
                                     f"claim {key}") from None
            ghl_id, created = found, False
        await effects.done(conn, key, ghl_id)
        return ghl_id, created

    async def _search_quietly(self, incoming: CanonicalContact) -> str | None:
        """GHL's duplicate search; a failed lookup counts as not found (the caller then
        treats the create as unknown, not as absent)."""
        try:
            found = await self._known_from_search(incoming)
        except (RetryLater, Permanent):
            return None
        return found.ghl_id if found is not None else None

    async def _apply(self, conn: Any, plan: Plan, known: KnownGhlContact | None,
                     incoming: CanonicalContact, claim_key: str | None
                     ) -> tuple[str, CanonicalContact, bool] | _Replan:
        """Run a plan's operations; every write is recorded in the echo ledger at once,
        except on top of a GHL change our copy lacked (``KnownGhlContact.missed``): that
        webhook must reach CG as the person's change it also carries."""
        ghl_id = known.ghl_id if known else ""
        after = known.contact if known else incoming
        ours = not (known and known.missed)
        wrote = False
        for operation in plan.operations:
            if isinstance(operation, CreateGhlContact):
                ghl_id, created = await self._create_once(conn, claim_key, operation.fields, incoming)
                await self._fault_pause()
                if not created:  # CA-3: GHL says it exists (duplicate 400 with meta.contactId)
                    return _Replan(ghl_id, reread=True, wrote=wrote)
                after = incoming.with_fields(tags=tuple(t.lower() for t in operation.fields.get("tags", [])),
                                             custom_fields=custom_pairs({f["id"]: f["field_value"] for f in
                                                                         operation.fields.get("customFields", [])}))
            elif isinstance(operation, UpdateGhlContact):
                updated = await self.ghl.update_contact(operation.ghl_id, operation.fields)
                if updated is None:  # gone from GHL since our snapshot: find or create again
                    return _Replan(operation.ghl_id, drop_mapping=True, wrote=wrote)
                after = ghl_to_canonical(updated, self.settings.default_phone_region)
                if known is not None and known.from_snapshot and _missed_besides(known.contact, after,
                                                                                  operation.fields):
                    # the answer is a free read: plan again from it (no GET), this write unrecorded
                    SNAPSHOT_MISSED.labels("write_answer").inc()
                    log.info("ghl_snapshot_stale", ghl_contact_id=ghl_id, reason="write_answer")
                    return _Replan(ghl_id, known=KnownGhlContact(ghl_id, after, missed=True), wrote=True)
            else:
                await self.ghl.add_tags(operation.ghl_id, list(operation.tags))
                after = after.with_fields(tags=(*after.tags, *(t.lower() for t in operation.tags)))
            if ours:
                await store.record_write(conn, "ghl", ghl_id, after.projection_hash())
            wrote = True
        return ghl_id, after, wrote

    async def handle(self, event: WebhookEvent, attempt: int) -> Outcome:
        """The dispatch table (spec/outbound.md §1.1) for what is implemented."""
        source, kind = event.source.value, event.canonical_type
        if source == "aloware":
            if kind in ("contact.created", "contact.updated"):
                if kind == "contact.updated":
                    await sequences.run(self, event, attempt)  # S-1 first
                return await self.sync_aloware_contact(event, attempt)
            if kind in CALL_TYPES:
                return await self.activity.call(event, attempt)
            if kind in KIND_OF_CANONICAL:
                return await self.activity.call_artifact(event, attempt)
            if kind == "contact.disposed":
                return await self.activity.contact_disposed(event, attempt)
            if kind == "contact.dnc_updated":
                return await self.activity.dnc_updated(event, attempt)
            if kind == "appointment.saved":
                return Outcome("skipped", "appointments_sot_is_ghl")
        if source == "texting" and kind == "optout.stop":
            return await self.activity.texting_optout(event, attempt)
        if source == "texting" and kind in ("message.inbound", "message.outbound"):
            return await self.messages.message(event, attempt)
        if source == "texting" and kind == "message.status":
            return await self.messages.status(event, attempt)
        if source == "broadcast" and kind == "broadcast.analytics":
            return await self.broadcasts.analytics_updated(event, attempt)
        return Outcome("skipped", f"Unhandled event type: {event.event_name}")

    async def upsert_from_aloware(self, conn: Any, body: Any, incoming: CanonicalContact, mapping: Any,
                                  event_at: datetime | None, *, direction: str = "aloware_to_ghl"
                                  ) -> tuple[str, bool]:
        """CA-2…CA-7 under the caller's contact lock: find (mapping, phone, e-mail) or create
        the GHL contact, write what differs, upsert the mapping (``direction`` on insert: D-1
        maps ``bidirectional``, §1.17). (GHL id, wrote anything)."""
        disposition = (body.disposition_status or "").strip() or None
        customs = custom_fields(self.cf_ids, body.id, body.lead_source, body.intake_source)
        # one GHL contact per Aloware contact, else per phone number (the activity rules)
        claim_key = (f"ghl_contact:aloware:{body.id}" if body.id
                     else f"ghl_contact:phone:{incoming.phone}" if incoming.phone
                     else f"ghl_contact:email:{incoming.email.lower()}" if incoming.email else None)
        known = await self._known_from_mapping(conn, mapping, customs)
        wrote_before = False
        for _ in range(3):  # re-plan when GHL changed under us (contact gone, duplicate, a missed change)
            if known is None:
                known = await self._known_from_search(incoming)
            plan = plan_contact_upsert(incoming, known, mode=self.settings.contact_source_of_truth,
                                       disposition=disposition, customs=customs)
            applied = await self._apply(conn, plan, known, incoming, claim_key)
            if isinstance(applied, _Replan):
                wrote_before = wrote_before or applied.wrote
                if applied.drop_mapping:
                    await store.drop_mapping(conn, applied.ghl_id)
                known = (applied.known if applied.known is not None
                         else await self._known_by_id(applied.ghl_id) if applied.reread else None)
                continue
            ghl_id, after, wrote = applied
            wrote = wrote or wrote_before
            break
        else:
            raise RetryLater(None, "GHL contact kept changing during the sync")
        await store.upsert_mapping(conn, ghl_id=ghl_id, aloware_id=body.id, phone=incoming.phone,
                                   email=incoming.email, direction=direction,
                                   aloware_event_at=event_at, ghl_snapshot=after.snapshot())
        return ghl_id, wrote

    async def sync_aloware_contact(self, event: WebhookEvent, attempt: int) -> Outcome:
        """CA-1 … CA-8."""
        started = datetime.now(UTC)
        try:
            body = AlowareContactEvent.model_validate(event.payload).body
        except ValidationError as exc:
            raise Permanent(f"invalid Aloware contact payload: {exc.errors()[0]['msg']}") from None
        common = {"direction": "aloware_to_ghl", "entity_type": "contact", "source_id": body.id,
                  "started_at": started, "correlation_id": str(event.event_id), "attempt": attempt}
        if not self.settings.sync_aloware_contacts_to_ghl:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="CA-0", message=SOT_SKIP, **common)
            return Outcome("skipped", SOT_SKIP)
        region = self.settings.default_phone_region
        incoming = aloware_to_canonical(body, region)
        event_at = _parse_time(body.updated_at) or event.received_at
        async with store.contact_lock(self.engine, store.contact_lock_key(incoming.phone, aloware_id=body.id)) as conn:
            if await store.is_echo(conn, "aloware", body.id, incoming.projection_hash(),
                                   self.settings.echo_window_seconds):
                await store.log_sync(conn, status="skipped", rule="LP-1", message="middleware-originated", **common)
                return Outcome("echo", "middleware-originated")
            mapping = await store.mapping_by_aloware(conn, body.id)
            # An event as old as the watermark is a redelivery of the newest one: skipped,
            # except in a replay, which is asked for to re-check GHL against it.
            if mapping and mapping.aloware_event_at and (
                event_at < mapping.aloware_event_at
                or (event_at == mapping.aloware_event_at and not is_replay())
            ):
                await store.log_sync(conn, status="skipped", rule="CA-2", target_id=mapping.ghl_contact_id,
                                     message="stale_event", **common)
                return Outcome("skipped", "stale_event")
            ghl_id, wrote = await self.upsert_from_aloware(conn, body, incoming, mapping, event_at)
            await store.log_sync(conn, status="success" if wrote else "skipped", rule="CA",
                                 target_id=ghl_id, message=None if wrote else "no_changes", **common)
        return Outcome("applied") if wrote else Outcome("skipped", "no_changes")



async def explain(settings: Settings, engine: AsyncEngine, event: WebhookEvent) -> list[str]:
    """For ``dfm replay --dry-run``: the plan the CA rule would make, from what PostgreSQL
    knows (the mapping's GHL snapshot), without calling GHL. A replay itself re-reads GHL,
    so a contact changed or deleted there since can make the real plan differ."""
    if not (event.source.value == "aloware" and event.canonical_type in ("contact.created", "contact.updated")):
        return [f"ghl-sync: no rule for {event.canonical_type}"]
    if not settings.sync_aloware_contacts_to_ghl:
        return [f"ghl-sync CA: skip ({SOT_SKIP})"]
    try:
        body = AlowareContactEvent.model_validate(event.payload).body
    except ValidationError as exc:
        return [f"ghl-sync CA: dead (invalid payload: {exc.errors()[0]['msg']})"]
    incoming = aloware_to_canonical(body, settings.default_phone_region)
    async with engine.connect() as conn:
        mapping = await store.mapping_by_aloware(conn, body.id)
    if mapping is None or not mapping.ghl_snapshot:
        return ["ghl-sync CA: no mapping with a snapshot; search GHL by phone/e-mail, then "
                "create the contact or update the one found"]
    known = KnownGhlContact(mapping.ghl_contact_id, CanonicalContact.from_snapshot(mapping.ghl_snapshot))
    ids = CustomFieldIds(settings.ghl_cf_aloware_contact_id, settings.ghl_cf_lead_source,
                         settings.ghl_cf_intake_source)
    plan = plan_contact_upsert(incoming, known, mode=settings.contact_source_of_truth,
                               disposition=(body.disposition_status or "").strip() or None,
                               customs=custom_fields(ids, body.id, body.lead_source, body.intake_source))
    lines = [f"ghl-sync CA: re-read GHL contact {mapping.ghl_contact_id} (recreate it if deleted)"]
    if plan.skip_reason:
        return [*lines, f"ghl-sync CA: then nothing to write if GHL still matches ({plan.skip_reason})"]
    for op in plan.operations:
        if isinstance(op, UpdateGhlContact):
            lines.append(f"ghl-sync CA: PUT /contacts/{op.ghl_id} fields {sorted(op.fields)}")
        elif isinstance(op, CreateGhlContact):
            lines.append(f"ghl-sync CA: POST /contacts/ fields {sorted(op.fields)}")
        else:
            lines.append(f"ghl-sync CA: POST /contacts/{op.ghl_id}/tags {list(op.tags)}")
    return lines
