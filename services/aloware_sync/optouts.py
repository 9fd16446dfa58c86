"""What an opt-out event says, read the way the rule that records it reads it (spec/outbound.md
O-2, M-1.4, D-1), so that aloware-sync can take the number off the call lists at once (R3).

ghl-sync records STOP and Aloware DNC events in the opt-out registry; aloware-sync receives
the same events and records them too, before touching any list, so the registry says opted
out whichever consumer comes first (``optout.record`` is idempotent per event). For that the
phone, source, reason and event time must be exactly those ghl-sync uses: the DNC flag and the
event time come from ``services/domain/optout.py`` (``dnc_flag``, ``event_time``), which both
consumers call; the rest follows ``services/ghl_sync/activity.py`` (``texting_optout``,
``dnc_updated``) and ``services/ghl_sync/messages.py`` (``_keywords``), which a service may not
import (STYLE.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.envelope import WebhookEvent
from contracts.payloads.texting import normalise_texting
from contracts.phone import to_e164
from services.domain import optout

__all__ = ["OptOut", "aloware_dnc", "dnc_body", "stop_keyword", "texting_stop"]


@dataclass(frozen=True)
class OptOut:
    """An opt-out of ``phone`` to record (unless ``record`` is False: already recorded) and
    act on. ``under_lock``: record it under the contact lock, as ghl-sync's M-1.4 does, so
    the two consumers' writes for one event are serialised the same way."""

    phone: str
    source: optout.Source
    reason: str
    at: datetime
    record: bool = True
    under_lock: bool = False

    async def write(self, conn: AsyncConnection, event: WebhookEvent) -> optout.Decision:
        """O-1 with O-4, keyed by the event (a second write for the same event is a no-op)."""
        return await optout.record(conn, self.phone, "opted_out", self.source, self.reason, at=self.at,
                                   event_id=event.event_id)


def texting_stop(event: WebhookEvent, region: str) -> OptOut | None:
    """O-2 ``optout.stop``: the number is ``from``, else ``to``; None without one."""
    msg = normalise_texting(event.payload)
    phone = to_e164(msg.from_number or msg.to_number, region)
    if not phone:
        return None
    return OptOut(phone, "texting", "STOP", optout.event_time(msg.timestamp, event.received_at))


def stop_keyword(event: WebhookEvent, region: str) -> OptOut | None:
    """M-1.4 / O-3: an inbound text that is exactly an opt-out word; None for any other text."""
    msg = normalise_texting(event.payload)
    direction = msg.direction or ("inbound" if event.canonical_type == "message.inbound" else "outbound")
    if direction != "inbound" or optout.keyword(msg.body) != "opt_out":
        return None
    phone = to_e164(msg.from_number, region)
    return OptOut(phone, "texting", "STOP", event.received_at, under_lock=True) if phone else None


def aloware_dnc(event: WebhookEvent, region: str) -> OptOut | None:
    """D-1 with the DNC flag set; None for a DNC removal (an opt-in changes no list) or a
    body without a phone."""
    payload = event.payload
    body = dnc_body(payload)
    phone = to_e164(body.get("phone_number"), region) if body.get("phone_number") else None
    if not phone or not optout.dnc_flag(body, payload):
        return None
    return OptOut(phone, "aloware", "DNC Updated", optout.event_time(body.get("updated_at"), event.received_at))


def dnc_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The Aloware contact an Aloware webhook carries (``body``), empty when it has none."""
    body = payload.get("body")
    return body if isinstance(body, dict) else {}
