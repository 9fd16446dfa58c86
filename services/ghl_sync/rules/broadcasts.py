"""Broadcast analytics into the GHL custom object ``custom_objects.broadcasts``
(spec/outbound.md §1.12, rules B-1…B-5), as a planner.

The figures are recomputed from Verity's database whenever an analytics event arrives
(``ReadBroadcastFigures``). Events of one broadcast are serialised by a lock and coalesced:
an event received before the last recomputation finished is already reflected in it and is
skipped.
"""

from __future__ import annotations

from typing import Any

from contracts.payloads.broadcast import BroadcastEvent
from services.domain.rules import RuleContext
from services.ghl_sync.rules.ops import (
    Done,
    EventRef,
    FindObjectRecord,
    LockContact,
    ObjectRecord,
    Plan,
    ReadBroadcastFigures,
    SyncLogFor,
    UpsertObjectRecord,
)
from services.infra.errors import Permanent

__all__ = ["LOGGED_FIGURES", "OBJECT_KEY", "VERITY_DATABASE", "plan_broadcast_analytics"]

OBJECT_KEY = "custom_objects.broadcasts"
VERITY_DATABASE = "verity_database"  # RuleContext flag: VERITY_DATABASE_URL is set
LOGGED_FIGURES = ("recipients", "delivered", "responses")


def plan_broadcast_analytics(broadcast: BroadcastEvent, event: EventRef, ctx: RuleContext) -> Plan:
    """B-1…B-5: under the broadcast's lock, skip an event the last recomputation already
    covers, else recompute the figures and write the record."""
    broadcast_id = broadcast.broadcast_id
    log = SyncLogFor("texting_to_ghl", "broadcast", broadcast_id)
    if not ctx.flag(VERITY_DATABASE):
        yield log.row("skipped", "B", message="verity_database_not_configured")
        return Done("skipped", "verity_database_not_configured")
    yield LockContact(f"broadcast:{broadcast_id}")
    record: ObjectRecord | None = yield FindObjectRecord(OBJECT_KEY, broadcast_id)
    if record is not None and record.updated_at > event.received_at:
        # a later recomputation already includes it
        yield log.row("skipped", "B", target_id=record.ghl_record_id, message="coalesced")
        return Done("skipped", "coalesced")
    figures: dict[str, Any] | None = yield ReadBroadcastFigures(broadcast_id)
    if figures is None:
        raise Permanent(f"broadcast {broadcast_id} not found in Verity")
    record_id = yield UpsertObjectRecord(
        OBJECT_KEY, broadcast_id, figures, record.ghl_record_id if record is not None else None
    )
    yield log.row("success", "B", target_id=record_id, details={k: figures.get(k) for k in LOGGED_FIGURES})
    return Done("applied")
