"""Dry run of verity-sync for one event (``dfm replay --dry-run``): the plan of every rule
family that takes it, one line per operation, without writing anywhere.

Known state comes from PostgreSQL as for a delivery (``known.py``); our own mapping is read
when a plan asks for it. Vendors are not asked: an operation's answer is *assumed* and the
line says so (Verity accepts the forward and the send; GHL's lookups find nothing, so the
webhook's own details are used; Verity's database finds a contact and the broadcasts that
reached it). Bodies are shown by size only.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.streams import VERITY_SYNC
from contracts.subjects import subject_matches
from services.domain.rules import RuleContext
from services.infra.errors import Permanent, RetryLater
from services.infra.settings import Settings
from services.verity_sync.known import known_appointment, known_forward, known_send, mapped_reach
from services.verity_sync.rules.appointment import LINKED, appointment_ref, plan_appointment_link
from services.verity_sync.rules.forward import plan_forward
from services.verity_sync.rules.ops import (
    FindAppointmentContact,
    FindGhlDuplicate,
    FindVerityContact,
    ForwardWebhook,
    Operation,
    Plan,
    ReachedBroadcasts,
    ReadGhlContact,
    ReadMapping,
    SendSmsOnce,
    SmsSent,
    SyncSubject,
)
from services.verity_sync.rules.provider_message import plan_send_sms
from services.verity_sync.service import VeritySync, parse_provider_message, route_for, rule_flags

ASSUMED_VERITY_CONTACT = "<verity contact found by phone/e-mail>"
ASSUMED_BROADCAST = "<each broadcast that reached it>"


async def explain(settings: Settings, engine: AsyncEngine, event: WebhookEvent) -> list[str]:
    """The plan of every verity-sync rule family for ``event`` (F-1, AP, M-2); [] when the
    verity-sync durable does not take its subject."""
    if not any(subject_matches(f, event.subject) for f in VERITY_SYNC.filter_subjects):
        return []
    ghl = bool(settings.ghl_api_key and settings.ghl_location_id)
    ctx = RuleContext.for_attempt(settings, attempt=1, replay=True, flags=rule_flags(settings, ghl=ghl))
    handler = route_for(event.subject).handler
    async with engine.connect() as conn:
        if handler is VeritySync.send_sms:
            try:
                sms = parse_provider_message(event)
            except Permanent as exc:
                return [f"M-2 → dead: {exc.reason}"]
            return await _lines("M-2", plan_send_sms(sms, await known_send(conn, sms, ctx.region), ctx), engine)
        if handler is VeritySync.unhandled_provider_message:
            return [f"verity-sync → skipped: Unhandled provider message type: {event.event_name}"]
        lines = await _lines("F-1", plan_forward(event, await known_forward(conn, event), ctx), engine)
        if handler is VeritySync.forward_and_link and event.canonical_type in LINKED:
            ref = appointment_ref(event)
            plan = plan_appointment_link(ref, await known_appointment(conn, ref), ctx)
            lines += await _lines("AP", plan, engine)
        return lines


async def _lines(family: str, plan: Plan, engine: AsyncEngine) -> list[str]:
    lines: list[str] = []
    try:
        op = next(plan)
        while True:
            answer, note = await _assumed(op, engine)
            lines.append(f"{family} {describe(op)}" + (f"  [{note}]" if note else ""))
            op = plan.send(answer)
    except StopIteration as stop:
        outcome = stop.value
        lines.append(f"{family} → {outcome.outcome}" + (f": {outcome.reason}" if outcome.reason else ""))
    except RetryLater as exc:
        lines.append(f"{family} → retry: {exc.reason}")
    except Permanent as exc:
        lines.append(f"{family} → dead: {exc.reason}")
    return lines


async def _assumed(op: Operation, engine: AsyncEngine) -> tuple[Any, str | None]:
    """The answer the dry run gives ``op`` and what it says about it."""
    match op:
        case ForwardWebhook():
            return 200, "assumed: Verity accepts it"
        case SendSmsOnce(source_id=source_id):
            return SmsSent("sent", f"<verity id of {source_id}>"), "assumed: Verity sends it"
        case FindAppointmentContact() | FindGhlDuplicate() | ReadGhlContact():
            return None, "GHL not asked in a dry run: assumed none"
        case ReadMapping(ghl_contact_id=contact_id):
            async with engine.connect() as conn:
                reach = await mapped_reach(conn, contact_id)
            return reach, f"our mapping: {'found' if reach else 'none'}"
        case FindVerityContact():
            return ASSUMED_VERITY_CONTACT, "Verity's database not read in a dry run: assumed found"
        case ReachedBroadcasts():
            return [ASSUMED_BROADCAST], "Verity's database not read in a dry run"
    return None, None


def describe(op: object) -> str:
    """``Name(field=value, …)`` without empty fields; bodies by size."""
    parts = []
    for field in dataclasses.fields(op):  # type: ignore[arg-type]
        value = getattr(op, field.name)
        if value is None:
            continue
        if field.name == "body_b64":
            parts.append(f"body=<{len(base64.b64decode(value))} bytes>")
        elif field.name == "body":
            parts.append(f"body=<{len(value)} characters>")
        elif isinstance(value, SyncSubject):
            parts.append(f"{field.name}={value.direction}/{value.entity_type}/{value.source_id}")
        elif dataclasses.is_dataclass(value):
            parts.append(f"{field.name}={describe(value)}")
        else:
            parts.append(f"{field.name}={value!r}")
    return f"{type(op).__name__}({', '.join(parts)})"


__all__ = ["describe", "explain"]
