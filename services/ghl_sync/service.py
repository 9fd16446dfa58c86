"""ghl-sync: rules whose write target is GHL. Implemented so far: CA (Aloware contact
created/updated → GHL contact) with echo suppression, ordering and per-contact locking."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads.aloware import AlowareContactEvent
from services.clients.ghl import GhlClient
from services.common.delivery import Outcome
from services.common.errors import Permanent, RetryLater
from services.common.logging import get_logger
from services.common.settings import Settings
from services.common.sync import store
from services.common.sync.contact import CanonicalContact, aloware_to_canonical, ghl_to_canonical
from services.ghl_sync.rules.contact import (
    CustomFieldIds,
    create_fields,
    custom_fields,
    missing_tags,
    update_fields,
)

SOT_SKIP = "aloware_contact_event_ignored_source_of_truth_is_ghl"
log = get_logger(__name__)


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

    def __init__(self, settings: Settings, engine: AsyncEngine, ghl: GhlClient) -> None:
        self.settings = settings
        self.engine = engine
        self.ghl = ghl
        self.cf_ids = CustomFieldIds(settings.ghl_cf_aloware_contact_id, settings.ghl_cf_lead_source,
                                     settings.ghl_cf_intake_source)

    async def _fault_pause(self) -> None:
        """Fault-test hook: hold the rule between the vendor write and the ack."""
        if self.settings.dfm_fault_pause_after_vendor_write_s:
            log.warning("fault_pause_after_vendor_write",
                        seconds=self.settings.dfm_fault_pause_after_vendor_write_s)
            await asyncio.sleep(self.settings.dfm_fault_pause_after_vendor_write_s)

    async def _find(self, incoming: CanonicalContact) -> str | None:
        """CA-2 (b), (c): GHL's duplicate lookup by phone, then by e-mail."""
        found = await self.ghl.find_duplicate(phone=incoming.phone) if incoming.phone else None
        if found is None and incoming.email:
            found = await self.ghl.find_duplicate(email=incoming.email)
        return found

    async def _update(self, conn: Any, ghl_id: str, have: CanonicalContact, incoming: CanonicalContact,
                      disposition: str | None) -> tuple[bool, CanonicalContact | None]:
        """CA-4/CA-5 against what GHL holds (``have``): (wrote, GHL after) or (False, None) on 404."""
        wrote, after = False, have
        changes = update_fields(have, incoming, self.settings.contact_source_of_truth)
        if changes:
            updated = await self.ghl.update_contact(ghl_id, changes)
            if updated is None:
                return False, None
            after = ghl_to_canonical(updated, self.settings.default_phone_region)
            await store.record_write(conn, "ghl", ghl_id, after.projection_hash())
            wrote = True
        add = missing_tags(after.tags, [disposition] if disposition else [])
        if add:
            await self.ghl.add_tags(ghl_id, add)
            after = after.with_fields(tags=(*after.tags, *(t.lower() for t in add)))
            await store.record_write(conn, "ghl", ghl_id, after.projection_hash())
            wrote = True
        return wrote, after

    async def handle(self, event: WebhookEvent, attempt: int) -> Outcome:
        """The dispatch table (spec/outbound.md §1.1) for what is implemented."""
        if event.source.value == "aloware" and event.canonical_type in ("contact.created", "contact.updated"):
            return await self.sync_aloware_contact(event, attempt)
        return Outcome("skipped", f"Unhandled event type: {event.event_name}")

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
            if mapping and mapping.aloware_event_at and event_at <= mapping.aloware_event_at:
                await store.log_sync(conn, status="skipped", rule="CA-2", target_id=mapping.ghl_contact_id,
                                     message="stale_event", **common)
                return Outcome("skipped", "stale_event")
            disposition = (body.disposition_status or "").strip() or None
            ghl_id, have = None, None
            if mapping:
                ghl_id = mapping.ghl_contact_id
                if mapping.ghl_snapshot:
                    have = CanonicalContact.from_snapshot(mapping.ghl_snapshot)
                else:
                    current = await self.ghl.get_contact(ghl_id)
                    have = ghl_to_canonical(current, region) if current else None
                if have is None:
                    await store.drop_mapping(conn, ghl_id)
                    ghl_id = None
            wrote, after = False, None
            if ghl_id is not None and have is not None:
                wrote, after = await self._update(conn, ghl_id, have, incoming, disposition)
                if after is None:  # gone from GHL since our snapshot: find or create again
                    await store.drop_mapping(conn, ghl_id)
                    ghl_id = None
            if ghl_id is None:
                ghl_id = await self._find(incoming)
                if ghl_id is None:
                    fields = create_fields(
                        incoming, disposition,
                        custom_fields(self.cf_ids, body.id, body.lead_source, body.intake_source),
                    )
                    ghl_id, created = await self.ghl.create_contact(fields)
                    await self._fault_pause()
                    if created:
                        wrote = True
                        tags = tuple(t.lower() for t in fields.get("tags", []))
                        after = incoming.with_fields(tags=tags)
                        await store.record_write(conn, "ghl", ghl_id, after.projection_hash())
                if after is None:
                    current = await self.ghl.get_contact(ghl_id)
                    if current is None:
                        raise RetryLater(None, f"GHL contact {ghl_id} vanished during sync")
                    wrote, after = await self._update(
                        conn, ghl_id, ghl_to_canonical(current, region), incoming, disposition)
                    if after is None:
                        raise RetryLater(None, f"GHL contact {ghl_id} vanished during sync")
            await store.upsert_mapping(conn, ghl_id=ghl_id, aloware_id=body.id, phone=incoming.phone,
                                       email=incoming.email, direction="aloware_to_ghl",
                                       aloware_event_at=event_at, ghl_snapshot=after.snapshot())
            await store.log_sync(conn, status="success" if wrote else "skipped", rule="CA",
                                 target_id=ghl_id, message=None if wrote else "no_changes", **common)
        return Outcome("applied") if wrote else Outcome("skipped", "no_changes")


__all__ = ["CanonicalContact", "GhlSync"]
