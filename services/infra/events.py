"""The PostgreSQL row that records an accepted event (spec/inbound.md §5.1–§5.3).

Written by the recorder and, when a consumer gets to an event first, by the consumer
(``INSERT … ON CONFLICT (dedupe_key) DO NOTHING`` either way), so the row is the same
whoever writes it.

An event that no consumer subscribes to (no rule acts on its type) is recorded as ``done``
with outcome ``ignored`` and reason ``Unhandled event type: <name>`` (spec/inbound.md R5),
so it neither waits forever as ``pending`` nor fills the sweep's batches. Replaying it
after a rule for its type exists processes it.
"""

from __future__ import annotations

import base64
from typing import Any

from contracts.envelope import WebhookEvent
from contracts.payloads.texting import normalise_texting
from contracts.phone import to_e164
from contracts.streams import expected_consumers
from contracts.subjects import Source
from contracts.tokens import bounded_id
from services.infra.db.models import BroadcastWebhookEventRow, TextingWebhookEventRow
from services.infra.db.models import WebhookEventRow as WebhookRow


def _status(event: WebhookEvent) -> dict[str, Any]:
    if event.outcome_hint:
        outcome, _, reason = event.outcome_hint.partition(":")
        return {"status": "done", "outcome": outcome, "outcome_reason": reason, "processed_at": event.received_at}
    if not expected_consumers(event.subject):
        return {
            "status": "done",
            "outcome": "ignored",
            "outcome_reason": f"Unhandled event type: {event.event_name}",
            "processed_at": event.received_at,
        }
    return {"status": "pending", "outcome": None, "outcome_reason": None, "processed_at": None}


def row_for(event: WebhookEvent, stream_seq: int | None, region: str) -> tuple[type[Any], dict[str, Any]]:
    """The table and column values recording ``event``."""
    common = {
        "id": event.event_id,
        "received_at": event.received_at,
        "payload_json": event.payload,
        "dedupe_key": event.dedupe_key,
        "stream_seq": stream_seq,
        **_status(event),
    }
    if event.source is Source.TEXTING:
        msg = normalise_texting(event.payload)
        return TextingWebhookEventRow, {
            **common,
            "event_type": event.event_name,
            "canonical_type": event.canonical_type,
            "entity_type": event.entity_type.value,
            "entity_id": event.entity_id,
            "conversation_id": bounded_id(msg.conversation_id) if msg.conversation_id else None,
            "from_number": to_e164(msg.from_number, region),
            "to_number": to_e164(msg.to_number, region),
        }
    if event.source is Source.BROADCAST:
        return BroadcastWebhookEventRow, {
            **common,
            "broadcast_id": event.entity_id,
            "event_type": event.event_name,
        }
    raw = base64.b64decode(event.payload_raw_b64) if event.payload_raw_b64 else None
    return WebhookRow, {
        **common,
        "source": event.source.value,
        "event_type": event.event_name,
        "event_token": event.event_type,
        "canonical_type": event.canonical_type,
        "entity_type": event.entity_type.value,
        "entity_id": event.entity_id,
        "location_id": event.location_id,
        "payload_raw": raw,
    }
