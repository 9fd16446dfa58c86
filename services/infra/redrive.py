"""Putting a recorded event back on the WEBHOOKS stream (sweep re-drives and replays).

The envelope comes from the stream itself (the row's ``stream_seq``) when the message is
still there, else it is rebuilt from the row. It is published on its own subject with a
message id *different* from its dedupe key (``<dedupe_key>:<tag>``), otherwise the stream's
duplicate window would silently drop it (spec/inbound.md §4.2), and with header
``Dfm-Redrive: <tag>`` so consumers and ``dfm trace`` can tell it from live traffic.
Exactly-once effects come from the consumers' ledger and rules, not from the stream.
"""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from contracts.envelope import (
    HEADER_EVENT_ID,
    HEADER_MSG_ID,
    HEADER_REDRIVE,
    AuthInfo,
    WebhookEvent,
)
from contracts.streams import WEBHOOKS_STREAM
from contracts.subjects import EntityType, Source
from contracts.tokens import normalise_token
from services.infra import tracing
from services.infra.db.models import TableName
from services.infra.logging import get_logger

log = get_logger(__name__)


def envelope_from_row(table: TableName, row: Any) -> WebhookEvent:
    """Rebuild the envelope of a recorded event (its stream message has aged out)."""
    auth = AuthInfo(method="insecure", verified=True)  # it was authenticated when accepted
    common = {
        "event_id": row.id,
        "received_at": row.received_at,
        "dedupe_key": row.dedupe_key,
        "payload": row.payload_json,
        "auth": auth,
        "event_name": row.event_type,
    }
    if table == "webhook":
        raw = row.payload_raw
        import base64

        return WebhookEvent(
            **common,
            source=Source(row.source),
            event_type=row.event_token,
            canonical_type=row.canonical_type,
            entity_type=EntityType(row.entity_type),
            entity_id=row.entity_id,
            location_id=row.location_id,
            payload_raw_b64=base64.b64encode(raw).decode() if raw else None,
        )
    if table == "texting":
        return WebhookEvent(
            **common,
            source=Source.TEXTING,
            event_type=normalise_token(row.event_type),
            canonical_type=row.canonical_type,
            entity_type=EntityType(row.entity_type),
            entity_id=row.entity_id or "",
        )
    return WebhookEvent(
        **common,
        source=Source.BROADCAST,
        event_type=normalise_token(row.event_type),
        canonical_type="broadcast.analytics",
        entity_type=EntityType.BROADCAST,
        entity_id=row.broadcast_id,
    )


async def envelope_for(js: JetStreamContext, table: TableName, row: Any) -> WebhookEvent:
    """The event as it was accepted: from the stream when still there, else from the row."""
    if row.stream_seq:
        try:
            msg = await js.get_msg(WEBHOOKS_STREAM, int(row.stream_seq))
        except NotFoundError:
            msg = None
        if msg is not None and (msg.headers or {}).get(HEADER_EVENT_ID) == str(row.id) and msg.data:
            try:
                return WebhookEvent.from_bytes(msg.data)
            except (ValidationError, ValueError):
                log.warning("stream_message_unreadable_rebuilding", event_id=str(row.id))
    return envelope_from_row(table, row)


async def publish_redrive(js: JetStreamContext, event: WebhookEvent, tag: str, timeout: float = 5.0) -> int:
    """Publish ``event`` again on its subject; the stream sequence it got."""
    headers = event.nats_headers()
    headers[HEADER_MSG_ID] = f"{event.dedupe_key}:{tag}"
    headers[HEADER_REDRIVE] = tag
    # a re-drive is a trace of its own (the webhook's may be long over), carried like the ingress's
    with tracing.span(
        f"redrive {event.canonical_type}",
        kind=SpanKind.PRODUCER,
        attributes={"dfm.event_id": str(event.event_id), "dfm.redrive": tag},
    ):
        tracing.inject(headers)
        ack = await js.publish(event.subject, event.to_bytes(), headers=headers, timeout=timeout)
    return int(ack.seq)
