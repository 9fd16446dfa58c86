"""M-2 (spec/outbound.md §1.8): an SMS a GHL agent sends (a conversation-provider delivery)
goes out through Verity's send-message API at most once.

The send is keyed by GHL's message id (effect claim ``m2:<messageId>``): only the attempt
that claims it sends, and one whose answer was lost is never resent (the executor's
``SendSmsOnce``). Opted-out numbers are never sent to (O-5a) and GHL is told the message
failed. Verity's API takes text only (§2.4 V1), so an agent's MMS goes out as its text with
``attachments_dropped`` noted; one with no text at all has nothing Verity could send: it
ends ``done`` (skipped) and GHL is told it failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contracts.payloads.provider import ProviderOutboundMessage
from contracts.phone import to_e164
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.infra.errors import OutcomeUnknown, Permanent
from services.verity_sync.rules.ops import VERITY_SEND, LogSync, Plan, ReportStatus, SendSmsOnce, SmsSent, SyncSubject

RULE = "M-2"
ATTACHMENTS_DROPPED = "attachments_dropped"
OPTED_OUT_ERROR = {"code": "opted_out", "type": "saas", "message": "Recipient has opted out of SMS"}
ATTACHMENTS_ERROR = {
    "code": "attachments_not_supported",
    "type": "saas",
    "message": "Attachments cannot be sent through this SMS provider; nothing was sent",
}


def send_key(sms: ProviderOutboundMessage) -> str:
    """The effect claim of the send: GHL's message id is the same on every delivery of it."""
    return f"m2:{sms.message_id}"


@dataclass(frozen=True)
class KnownSend:
    """What PostgreSQL says before the send: how an earlier claim of it ended (``done``,
    ``unknown`` with its ``detail``, or None: never settled) and whether the recipient is in
    the opt-out registry."""

    settled: Literal["done", "unknown"] | None = None
    detail: str | None = None
    opted_out: bool = False


def plan_send_sms(sms: ProviderOutboundMessage, known: KnownSend, ctx: RuleContext) -> Plan:
    """M-2. A send settled before wins over everything after it (a replay of a sent message
    to a number that opted out since says ``already_sent``, and GHL is not told it failed)."""
    subject = SyncSubject("ghl_to_texting", "message", sms.message_id)
    phone = to_e164(sms.phone, ctx.region)
    if phone and sms.attachments and not (sms.message or "").strip():
        # GHL is told first: a failed report retries the event before anything is logged
        yield ReportStatus(sms.message_id, "failed", ATTACHMENTS_ERROR)
        yield LogSync(
            RULE, "skipped", subject, ATTACHMENTS_DROPPED, details={ATTACHMENTS_DROPPED: len(sms.attachments)}
        )
        return Outcome("skipped", ATTACHMENTS_DROPPED)
    if not phone or not sms.message:
        raise Permanent("provider message without phone or message text")
    if known.settled == "done":
        return Outcome("skipped", "already_sent")
    if known.settled == "unknown":
        raise OutcomeUnknown(
            f"send-message for correlationId {sms.message_id} ({known.detail}); "
            "check Verity, then resolve the claim " + send_key(sms)
        )
    if known.opted_out:
        yield LogSync(RULE, "skipped", subject, "recipient_opted_out")
        yield ReportStatus(sms.message_id, "failed", OPTED_OUT_ERROR)
        return Outcome("skipped", "recipient_opted_out")
    if not ctx.flag(VERITY_SEND):
        raise Permanent("VERITY_API_KEY / VERITY_BASE_URL are not set")
    note = ATTACHMENTS_DROPPED if sms.attachments else None
    details = {ATTACHMENTS_DROPPED: len(sms.attachments)} if sms.attachments else None
    sent: SmsSent = yield SendSmsOnce(
        sms.message_id, phone, sms.message, sms.contact_id, LogSync(RULE, "success", subject, note, details=details)
    )
    if sent.state == "already_sent":
        return Outcome("skipped", "already_sent")
    return Outcome("applied", note)
