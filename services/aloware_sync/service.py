"""aloware-sync: rules whose write target is Aloware: CG (GHL contact created/updated/tags
changed → Aloware contact) with merge modes and echo suppression, the call lists (L), D-3,
O-7, M-3, and the list half of every opt-out (STOP, Aloware DNC, GHL DND take the number off
the call lists when they arrive, R3)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads import is_ghl_marketplace
from contracts.payloads.texting import normalise_texting
from contracts.phone import to_e164
from services.aloware_sync import optouts
from services.aloware_sync.lists import ListRules, contact_id
from services.aloware_sync.optouts import OptOut
from services.aloware_sync.rules.contact import (
    CreateAlowareContact,
    UpdateAlowareContact,
    plan_ghl_contact_sync,
)
from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient, GhlContact
from services.domain import optout, store
from services.domain.contact import aloware_to_canonical, ghl_to_canonical
from services.infra.db.models import ContactMappingRow, MessageMappingRow
from services.infra.delivery import Outcome
from services.infra.errors import RetryLater
from services.infra.settings import Settings

CG_TYPES = ("contact.created", "contact.updated", "contact.tags_changed")
LIST_TYPES = ("tag.added", "tag.removed", "opportunity.statusChanged", "pipeline.stageChanged")


def _merge(first: Outcome, second: Outcome) -> Outcome:
    """One outcome for two rules run on one event: ``applied`` if either changed something,
    else the contact rule's."""
    return second if second.outcome == "applied" and first.outcome != "applied" else first


class AlowareSync:
    """Dispatches events to Aloware-writing rules."""

    def __init__(self, settings: Settings, engine: AsyncEngine, ghl: GhlClient,
                 aloware: AlowareClient) -> None:
        self.settings = settings
        self.engine = engine
        self.ghl = ghl
        self.aloware = aloware
        self.lists = ListRules(self)

    async def handle(self, event: WebhookEvent, attempt: int) -> Outcome:
        """The dispatch table (spec/outbound.md §1.1) for what is implemented."""
        region = self.settings.default_phone_region
        if event.source.value == "ghl" and event.canonical_type == "contact.deleted":
            return await self.ghl_contact_deleted(event, attempt)
        if event.source.value == "texting" and event.canonical_type == "optout.stop":
            return await self.opted_out(event, attempt, optouts.texting_stop(event, region))
        if event.source.value == "aloware" and event.canonical_type == "contact.dnc_updated":
            body = optouts.dnc_body(event.payload)
            return await self.opted_out(event, attempt, optouts.aloware_dnc(event, region),
                                        aloware_id=str(body["id"]) if body.get("id") is not None else None)
        if event.source.value == "texting" and event.canonical_type in ("message.inbound", "message.outbound"):
            stop = optouts.stop_keyword(event, region)  # M-1.4: an inbound STOP text is an opt-out too
            removed = await self.lists.remove_opted_out(event, attempt, stop) if stop else None
            linked = await self.link_text(event, attempt)
            return linked if removed is None else _merge(linked, removed)
        if event.source.value == "ghl" and event.canonical_type == "contact.dnd_changed":
            return await self.ghl_dnd_changed(event, attempt)
        if event.source.value == "ghl" and event.canonical_type in CG_TYPES:
            if self.settings.sync_ghl_contacts_to_aloware:
                synced, latest = await self.sync_ghl_contact(event, attempt)
            else:
                synced, latest = await self._echo_only(event)
            # R1: an echo of our own write changes no list (the reassignment a human may have
            # made meanwhile excepted, see ListRules.on_event)
            return _merge(synced, await self.lists.on_event(event, attempt, latest,
                                                            echo=synced.outcome == "echo"))
        if event.source.value == "ghl" and event.canonical_type in LIST_TYPES:
            async with self.engine.connect() as conn:
                mapped = await store.mapping_by_ghl(conn, contact_id(event))
            if (mapped is None or not mapped.aloware_contact_id) and self.settings.sync_ghl_contacts_to_aloware \
                    and self.settings.enable_power_dialer_lists:
                # L-2 step 2: the Aloware contact first (an opportunity event's own id is not the contact's)
                _, latest = await self.sync_ghl_contact(event, attempt, contact_id(event))
                return await self.lists.on_event(event, attempt, latest)
            return await self.lists.on_event(event, attempt, None)
        prefix = "Unhandled GHL event type" if event.source.value == "ghl" else "Unhandled event type"
        return Outcome("skipped", f"{prefix}: {event.event_name}")

    async def _body_echo(self, event: WebhookEvent, ghl_id: str) -> GhlContact | None:
        """LP-1 on the webhook body itself: a marketplace body carries the whole contact, so
        an echo of our own write is recognised without re-reading GHL (one call saved). The
        body's contact when it is an echo, else None."""
        if not is_ghl_marketplace(event.payload):
            return None
        try:
            body = GhlContact.model_validate(event.payload)
        except ValidationError:
            return None
        projection = ghl_to_canonical(body, self.settings.default_phone_region).projection_hash()
        async with self.engine.connect() as conn:
            echo = await store.is_echo(conn, "ghl", ghl_id, projection, self.settings.echo_window_seconds)
        return body if echo else None

    async def _echo_only(self, event: WebhookEvent) -> tuple[Outcome, GhlContact | None]:
        """R1 with the contact sync off (``SYNC_GHL_CONTACTS_TO_ALOWARE=false``): the list rules
        still must not act on our own echo, so the check CG would have made is made here (the
        contact read, when needed, is the one the list rules would make anyway)."""
        skipped = Outcome("skipped", "ghl_contact_sync_disabled")
        body = await self._body_echo(event, event.entity_id)
        if body is not None:
            return Outcome("echo", "middleware-originated"), body
        if is_ghl_marketplace(event.payload):
            return skipped, None
        current = await self.ghl.get_contact(contact_id(event))
        if current is None:
            return skipped, None
        projection = ghl_to_canonical(current, self.settings.default_phone_region).projection_hash()
        async with self.engine.connect() as conn:
            echo = await store.is_echo(conn, "ghl", current.id, projection, self.settings.echo_window_seconds)
        return (Outcome("echo", "middleware-originated") if echo else skipped), current

    async def opted_out(self, event: WebhookEvent, attempt: int, opt_out: OptOut | None, *,
                        aloware_id: str | None = None) -> Outcome:
        """The list half of a texting STOP (O-2) or an Aloware DNC (D-1): ghl-sync writes the
        registry and the GHL tags; this takes the number off every call list at once. An event
        that opts nobody out (a DNC removal, no phone) changes no list: ``ignored``, so the
        event's outcome is ghl-sync's."""
        if opt_out is None:
            return Outcome("ignored", "no_opt_out_for_lists")
        return await self.lists.remove_opted_out(event, attempt, opt_out, aloware_id=aloware_id)

    async def link_text(self, event: WebhookEvent, attempt: int) -> Outcome:
        """M-3: Aloware has no message API; link the text's Aloware contact when one exists
        (never creating one) on the message and contact mappings."""
        if not self.settings.texting_sync_to_aloware:
            return Outcome("skipped", "texting_sync_to_aloware_disabled")
        msg = normalise_texting(event.payload)
        direction = msg.direction or ("inbound" if event.canonical_type == "message.inbound" else "outbound")
        phone = to_e164(msg.from_number if direction == "inbound" else msg.to_number, self.settings.default_phone_region)
        common = {"direction": "texting_to_aloware", "entity_type": "message", "source_id": msg.message_id or "unknown",
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
        aloware_id = None
        if phone:
            async with self.engine.connect() as conn:
                mapping = await store.mapping_by_phone(conn, phone)
            aloware_id = mapping.aloware_contact_id if mapping is not None else None
            if aloware_id is None:
                record = await self.aloware.lookup_by_phone(phone)
                aloware_id = record.id if record else None
        async with self.engine.begin() as conn:
            if aloware_id is None:
                await store.log_sync(conn, status="skipped", rule="M-3", message="no-aloware-contact", **common)
                return Outcome("skipped", "no-aloware-contact")
            if msg.message_id:
                await conn.execute(pg_insert(MessageMappingRow).values(
                    texting_message_id=msg.message_id, aloware_contact_id=aloware_id, direction=direction,
                ).on_conflict_do_update(index_elements=["texting_message_id"], set_={
                    "aloware_contact_id": func.coalesce(MessageMappingRow.aloware_contact_id, aloware_id),
                    "updated_at": func.now()}))
            await conn.execute(update(ContactMappingRow).where(
                ContactMappingRow.phone_number == phone, ContactMappingRow.aloware_contact_id.is_(None))
                .values(aloware_contact_id=aloware_id, updated_at=func.now()))
            await store.log_sync(conn, status="skipped", rule="M-3", target_id=aloware_id,
                                 message="aloware_has_no_message_api", **common)
        return Outcome("skipped", "aloware_has_no_message_api")

    async def ghl_dnd_changed(self, event: WebhookEvent, attempt: int) -> Outcome:
        """O-7: GHL's DND state of the contact, re-read, into the opt-out registry (source
        ``ghl``; an opt-in is subject to O-4, so it never clears a texting STOP)."""
        ghl_id = event.entity_id
        common = {"direction": "ghl_to_texting", "entity_type": "optout", "source_id": ghl_id,
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
        current = await self.ghl.get_contact(ghl_id)
        phone = ghl_to_canonical(current, self.settings.default_phone_region).phone if current else None
        if current is None or not phone:
            reason = "ghl_contact_not_found" if current is None else "no_phone"
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="O-7", message=reason, **common)
            return Outcome("skipped", reason)
        sms = ((current.model_extra or {}).get("dndSettings") or {}).get("SMS") or {}
        dnd = current.dnd is True or sms.get("status") == "active"
        status: optout.Status = "opted_out" if dnd else "opted_in"
        async with self.engine.begin() as conn:
            decision = await optout.record(conn, phone, status, "ghl", "GHL DND", at=event.received_at,
                                           event_id=event.event_id)
            await store.log_sync(conn, status="success" if decision.applied else "skipped", rule="O-7",
                                 target_id=phone, message=f"DND status: {decision.status}" if decision.applied
                                 else decision.reason, **common)
        recorded = Outcome("applied") if decision.applied else Outcome("skipped", decision.reason)
        if status != "opted_out":
            return recorded
        # GHL sends no other event for a DND change: the lists are cleaned now or never (R3)
        removed = await self.lists.remove_opted_out(
            event, attempt, OptOut(phone, "ghl", "GHL DND", event.received_at, record=False), ghl_id=ghl_id)
        return _merge(recorded, removed)

    async def ghl_contact_deleted(self, event: WebhookEvent, attempt: int) -> Outcome:
        """D-3: take the Aloware contact off every call list; remember the GHL deletion."""
        ghl_id = event.entity_id
        common = {"direction": "ghl_to_aloware", "entity_type": "contact", "source_id": ghl_id,
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id),
                  "attempt": attempt}
        async with self.engine.connect() as conn:
            mapping = await store.mapping_by_ghl(conn, ghl_id)
        key = store.contact_lock_key(mapping.phone_number if mapping else None, ghl_id=ghl_id)
        async with store.contact_lock(self.engine, key) as conn:
            mapping = await store.mapping_by_ghl(conn, ghl_id)
            if mapping is None or mapping.aloware_contact_id is None:
                await store.log_sync(conn, status="skipped", rule="D-3", message="No contact mapping found", **common)
                return Outcome("skipped", "No contact mapping found")
            removed = await self.aloware.remove_from_all_lists(mapping.aloware_contact_id)
            await store.mark_ghl_deleted(conn, ghl_id)
            await store.log_sync(conn, status="success", rule="D-3", target_id=mapping.aloware_contact_id,
                                 message=None if removed else "already absent in Aloware", **common)
        return Outcome("applied")

    async def sync_ghl_contact(self, event: WebhookEvent, attempt: int,
                               ghl_id: str | None = None) -> tuple[Outcome, GhlContact | None]:
        """CG-1 … CG-7. Also returns the GHL contact as this sync last saw it (None when it
        did not read one), so the list rules that follow do not read GHL a second time."""
        started = datetime.now(UTC)
        ghl_id = ghl_id or event.entity_id
        common = {"direction": "ghl_to_aloware", "entity_type": "contact", "source_id": ghl_id,
                  "started_at": started, "correlation_id": str(event.event_id), "attempt": attempt}
        region = self.settings.default_phone_region
        body = await self._body_echo(event, ghl_id) if ghl_id == event.entity_id else None  # the body is this contact
        if body is not None:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="LP-1", message="middleware-originated", **common)
            return Outcome("echo", "middleware-originated"), body
        current = await self.ghl.get_contact(ghl_id)
        if current is None:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="CG-1", message="ghl_contact_not_found", **common)
            return Outcome("skipped", "ghl_contact_not_found"), None
        ghl = ghl_to_canonical(current, region)
        if not ghl.phone:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="CG-2", message="no_phone_for_aloware", **common)
            return Outcome("skipped", "no_phone_for_aloware"), current
        async with store.contact_lock(self.engine, store.contact_lock_key(ghl.phone, ghl_id=ghl_id)) as conn:
            if await store.is_echo(conn, "ghl", ghl_id, ghl.projection_hash(), self.settings.echo_window_seconds):
                await store.log_sync(conn, status="skipped", rule="LP-1", message="middleware-originated", **common)
                return Outcome("echo", "middleware-originated"), current
            record = await self.aloware.lookup_by_phone(ghl.phone)
            alo = aloware_to_canonical(record, region) if record else None
            plan = plan_ghl_contact_sync(ghl, alo, self.settings.contact_source_of_truth)
            decisions, wrote = list(plan.decisions), False
            for operation in plan.operations:
                if isinstance(operation, CreateAlowareContact):
                    await self.aloware.upsert_contact(operation.form, force_update=False)
                    record = await self.aloware.lookup_by_phone(ghl.phone)
                    if record is None:
                        raise RetryLater(None, "Aloware contact not found right after create")
                    await store.record_write(conn, "aloware", record.id,
                                             aloware_to_canonical(record, region).projection_hash())
                elif isinstance(operation, UpdateAlowareContact):
                    assert record is not None
                    await self.aloware.upsert_contact(operation.form, force_update=True)
                    await store.record_write(conn, "aloware", record.id, operation.expected.projection_hash())
                else:
                    updated = await self.ghl.update_contact(ghl_id, operation.fields)
                    if updated is None:
                        return Outcome("skipped", "ghl_contact_not_found"), None
                    current, ghl = updated, ghl_to_canonical(updated, region)
                    await store.record_write(conn, "ghl", ghl_id, ghl.projection_hash())
                wrote = True
            assert record is not None
            await store.upsert_mapping(conn, ghl_id=ghl_id, aloware_id=record.id, phone=ghl.phone,
                                       email=ghl.email, direction="bidirectional",
                                       ghl_event_at=event.received_at, ghl_snapshot=ghl.snapshot())
            await store.log_sync(conn, status="success" if wrote else "skipped", rule="CG",
                                 target_id=record.id, message=None if wrote else "no_changes",
                                 details={"decisions": [d.as_dict() for d in decisions]} or None, **common)
        return (Outcome("applied") if wrote else Outcome("skipped", "no_changes")), current


def explain(event: WebhookEvent) -> list[str]:
    """For ``dfm replay --dry-run``: what aloware-sync would do (its rules read both vendors
    first, so the exact writes are only known when it runs)."""
    if event.canonical_type in ("contact.deleted",):
        return [f"aloware-sync D-3: take the mapped Aloware contact of GHL {event.entity_id} off every list"]
    lists = ("aloware-sync R3: if this opts the number out, take it off every Aloware call list and mark "
             "its memberships removed (nothing while the Power Dialer lists are disabled)")
    if event.canonical_type in ("optout.stop", "contact.dnc_updated"):
        return [lists]
    if event.canonical_type == "contact.dnd_changed":
        return ["aloware-sync O-7: re-read the GHL contact's DND into the opt-out registry", lists]
    if event.canonical_type in ("message.inbound", "message.outbound"):
        link = "aloware-sync M-3: link the text to the number's Aloware contact (Aloware has no message API)"
        return [lists, link] if optouts.stop_keyword(event, "US") is not None else [link]
    if event.entity_type.value == "contact":
        return [f"aloware-sync CG: read GHL contact {event.entity_id}, look it up in Aloware by phone, "
                "write only the fields that differ (nothing if they agree)"]
    return [f"aloware-sync: no rule for {event.canonical_type}"]
