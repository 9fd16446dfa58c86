"""F-1 (spec/outbound.md §1.16): every webhook GHL sent us (W1) is forwarded to Verity with
the raw body bytes and GHL's signature header, so Verity can verify it as if GHL had called
it; a replay does not forward again."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.envelope import WebhookEvent
from contracts.subjects import Source
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.infra.errors import Misconfigured, Permanent, status_cause
from services.verity_sync.rules.ops import VERITY_API, ForwardWebhook, LogSync, Plan, SyncSubject

RULE = "F-1"


@dataclass(frozen=True)
class KnownForward:
    """What PostgreSQL says about this event's forward: ``forwarded`` when a ``sync_log``
    F-1 success row carries its event id (a replay then sends nothing)."""

    forwarded: bool = False


def plan_forward(event: WebhookEvent, known: KnownForward, ctx: RuleContext) -> Plan:
    """F-1. Not configured (no VERITY_BASE_URL), rebuilt by reconciliation (GHL never sent
    it: no raw body) or forwarded before: skipped. Verity's 4xx is logged and ends the
    delivery dead (a 401/403 as ``Misconfigured``: our secret is not Verity's)."""
    if event.source is not Source.GHL:
        return Outcome("skipped", f"Unhandled event type: {event.event_name}")
    if not ctx.flag(VERITY_API):
        return Outcome("skipped", "verity_not_configured")
    if event.payload.get("dfmReconciled") or event.payload_raw_b64 is None:
        return Outcome("skipped", "not_a_ghl_delivery")
    if known.forwarded:
        return Outcome("skipped", "already_forwarded")
    subject = SyncSubject("ghl_to_verity", event.entity_type.value, event.entity_id or "unknown")
    status: int = yield ForwardWebhook(event.payload_raw_b64, event.forward_signature)
    if status >= 400:
        message = f"verity {status} at ghl.webhook.forward"
        yield LogSync(RULE, "error", subject, message)
        refused = Misconfigured if status in (401, 403) else Permanent
        raise refused(message, status=status, cause=status_cause(status))
    yield LogSync(RULE, "success", subject)
    return Outcome("applied")
