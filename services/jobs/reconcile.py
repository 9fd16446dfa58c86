"""Contact reconciliation, rule R-1 (spec/outbound.md §1.14): heal missed webhooks.

Pages through ``contact_mappings`` by GHL id, resuming from the checkpoint in ``sync_state``
(``ghl_to_aloware``/``contact``), and reads each mapped contact from GHL (through the shared
rate budget). A contact GHL no longer has counts as drift. A repair is due when GHL's
current state differs from what we last saw (the mapping's snapshot: a GHL webhook we
missed), or, with the snapshot in agreement, when CG would still change something given
Aloware's current record (looked up by phone): our copy of GHL is not evidence that Aloware
holds the same, because CA refreshes it from GHL's answers and an Aloware webhook can be
lost too. The repair is a ``ContactUpdate`` event carrying GHL's current state on the normal
subject, so aloware-sync repairs Aloware through the same rule, ledger, echo guard and
idempotency as a live webhook. The dedupe key is the hash of the states compared: the same
drift is published once, a new one again.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import ReconcileRequested
from contracts.envelope import AuthInfo, WebhookEvent
from contracts.subjects import EntityType, Source
from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient
from services.domain.contact import CanonicalContact, aloware_to_canonical, ghl_to_canonical
from services.domain.merge import out_of_sync
from services.infra.db.models import ContactMappingRow, ReconcileRunRow, SyncStateRow
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)
JOB_NAME = "reconcile-contacts"


def missed_update_event(location_id: str, contact: Any, state_hash: str) -> WebhookEvent:
    """A ContactUpdate webhook rebuilt from GHL's current state of ``contact``."""
    # a read shows the timezone, even an empty one: LP-1 then checks the whole projection
    body = {**contact.model_dump(by_alias=True, exclude_none=True), "timezone": contact.timezone}
    payload = {"type": "ContactUpdate", "locationId": location_id, **body, "dfmReconciled": True}
    return WebhookEvent(
        source=Source.GHL,
        event_name="ContactUpdate",
        event_type="contact_update",
        canonical_type="contact.updated",
        entity_type=EntityType.CONTACT,
        entity_id=contact.id,
        dedupe_key=f"reconcile:contact:{contact.id}:{state_hash[:32]}",
        location_id=location_id,
        auth=AuthInfo(method="internal", verified=True),
        payload=payload,
    )


class ContactReconciler:
    """One reconciliation run per command."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        js: JetStreamContext,
        ghl: GhlClient | None,
        aloware: AlowareClient | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.js = js
        self.ghl = ghl
        self.aloware = aloware  # None: one of our own per run, from ALOWARE_API_TOKEN when set

    async def run(self, command: ReconcileRequested) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            run_id = (
                await conn.execute(
                    insert(ReconcileRunRow).values(job_name=JOB_NAME, status="running").returning(ReconcileRunRow.id)
                )
            ).scalar_one()
        totals = {"driftCount": 0, "repairsCount": 0, "errors": 0, "totalProcessed": 0}
        own_aloware = (
            AlowareClient.from_settings(self.settings)
            if self.aloware is None and self.settings.aloware_api_token
            else None
        )
        try:
            if self.ghl is None or not self.settings.ghl_location_id:
                raise Permanent("reconciliation needs GHL_API_KEY and GHL_LOCATION_ID")
            wrapped = await self._page(command.limit, totals, self.aloware or own_aloware)
        except Exception as exc:
            await self._finish(run_id, "error", totals, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finally:
            if own_aloware is not None:
                await own_aloware.aclose()
        await self._finish(run_id, "success", {**totals, "wrapped": wrapped}, None)
        log.info("reconcile_done", **totals, wrapped=wrapped)
        return totals

    async def _page(self, limit: int, totals: dict[str, int], aloware: AlowareClient | None) -> bool:
        assert self.ghl is not None
        async with self.engine.connect() as conn:
            cursor = await conn.scalar(
                select(SyncStateRow.cursor_id).where(
                    SyncStateRow.direction == "ghl_to_aloware", SyncStateRow.entity_type == "contact"
                )
            )
            stmt = select(ContactMappingRow).where(ContactMappingRow.ghl_deleted_at.is_(None))
            if cursor:
                stmt = stmt.where(ContactMappingRow.ghl_contact_id > cursor)
            mappings = (await conn.execute(stmt.order_by(ContactMappingRow.ghl_contact_id).limit(limit))).all()
        region = self.settings.default_phone_region
        last = cursor
        for mapping in mappings:
            totals["totalProcessed"] += 1
            last = mapping.ghl_contact_id
            try:
                current = await self.ghl.get_contact(mapping.ghl_contact_id)
            except (RetryLater, Permanent) as exc:
                totals["errors"] += 1
                log.warning("reconcile_read_failed", ghl_contact_id=mapping.ghl_contact_id, error=str(exc))
                continue
            if current is None:
                totals["driftCount"] += 1
                continue
            now = ghl_to_canonical(current, region)
            seen = CanonicalContact.from_snapshot(mapping.ghl_snapshot) if mapping.ghl_snapshot else None
            state_hash = now.projection_hash()
            if seen is not None and seen.projection_hash() == state_hash:
                try:
                    aloware_hash = await self._aloware_drift(aloware, now)
                except (RetryLater, Permanent) as exc:
                    totals["errors"] += 1
                    log.warning("reconcile_aloware_read_failed", ghl_contact_id=mapping.ghl_contact_id, error=str(exc))
                    continue
                if aloware_hash is None:
                    continue
                state_hash = hashlib.sha256(f"{state_hash}:{aloware_hash}".encode()).hexdigest()
            event = missed_update_event(str(self.settings.ghl_location_id), current, state_hash)
            await self.js.publish(
                event.subject, event.to_bytes(), headers=event.nats_headers(), timeout=self.settings.dfm_publish_timeout
            )
            totals["repairsCount"] += 1
        wrapped = len(mappings) < limit
        await self._checkpoint(None if wrapped else last, success=True)
        return wrapped

    async def _aloware_drift(self, aloware: AlowareClient | None, ghl: CanonicalContact) -> str | None:
        """The projection hash of Aloware's record when CG would change something given it
        (spec R-1 "else CG sync", counted only when there is something to repair), else
        None. Nothing to compare when CG is switched off, without an Aloware token or
        without a phone (Aloware is looked up by phone, CG-2)."""
        if aloware is None or not self.settings.sync_ghl_contacts_to_aloware or not ghl.phone:
            return None
        record = await aloware.lookup_by_phone(ghl.phone)
        alo = aloware_to_canonical(record, self.settings.default_phone_region) if record else None
        if not out_of_sync(ghl, alo, self.settings.contact_source_of_truth):
            return None
        return alo.projection_hash() if alo is not None else "absent"

    async def _checkpoint(self, cursor: str | None, *, success: bool) -> None:
        now = datetime.now(UTC)
        values: dict[str, Any] = {"cursor_id": cursor, "cursor_updated_at": now, "last_run_at": now}
        if success:
            values["last_success_at"] = now
        async with self.engine.begin() as conn:
            await conn.execute(
                pg_insert(SyncStateRow)
                .values(direction="ghl_to_aloware", entity_type="contact", **values)
                .on_conflict_do_update(index_elements=["direction", "entity_type"], set_=values)
            )

    async def _finish(self, run_id: Any, status: str, totals: dict[str, Any], error: str | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ReconcileRunRow)
                .where(ReconcileRunRow.id == run_id)
                .values(status=status, finished_at=func.now(), totals=totals, error_message=error)
            )
