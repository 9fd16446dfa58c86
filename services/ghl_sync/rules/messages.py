"""Texting messages into the GHL conversation (spec/outbound.md §1.8 M-1, with the STOP/START
keywords of O-3 on inbound texts) and delivery status of messages GHL agents sent through us
(M-4), as planners.

A message is posted at most once per texting message id (``PostMessageOnce``). An outbound
text that is the echo of a GHL agent's own SMS (sent through M-2) is not posted again
(M-1.2). The media URLs of an MMS go with the message as GHL ``attachments`` (M-1.7). A
contact GHL does not have yet is created from the text as a texting contact (M-1.5).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from contracts.payloads.texting import NormalisedTextingMessage, normalise_texting
from contracts.phone import to_e164
from services.domain.rules import RuleContext
from services.ghl_sync.rules.ops import (
    AgentMessage,
    Done,
    EchoOfAgentMessage,
    EventRef,
    FindAgentMessage,
    FindOutboundEcho,
    FindSyncedMessage,
    LinkTextingMessage,
    LockContact,
    Plan,
    PostMessageOnce,
    RecordDeliveryStatus,
    ReportMessageStatus,
    ResolveConversation,
    ResolveTextingContact,
    SyncLogFor,
)
from services.ghl_sync.rules.optouts import plan_keyword
from services.infra.errors import Permanent

__all__ = [
    "ECHO_WINDOW",
    "MEDIA_FIELDS",
    "STATUS_TO_GHL",
    "TextingText",
    "body_sha256",
    "media_urls",
    "parse_texting",
    "plan_message",
    "plan_message_status",
]

ECHO_WINDOW = timedelta(seconds=120)
STATUS_TO_GHL = {"sent": "delivered", "delivered": "delivered", "failed": "failed", "undelivered": "failed"}
# where texting webhooks carry an MMS's media ⚠ (spec/inbound.md §2.5 names none): first the
# message object, then the top level; each a URL, a list of URLs or of objects with ``url``
MEDIA_FIELDS = ("attachments", "mediaUrls", "media_urls", "mediaUrl", "media_url", "media")


def body_sha256(text: str | None) -> str:
    return hashlib.sha256((text or "").strip().encode()).hexdigest()


def media_urls(payload: dict[str, Any]) -> list[str]:
    """M-1.7: the http(s) URLs of an MMS's media, in order, each once."""
    nested = [payload[k] for k in ("message", "data") if isinstance(payload.get(k), dict)]
    for source in (*nested[:1], payload):
        found: list[str] = []
        for name in MEDIA_FIELDS:
            value = source.get(name)
            for item in value if isinstance(value, list) else [value]:
                url = item.get("url") if isinstance(item, dict) else item
                if (
                    isinstance(url, str)
                    and url.strip().lower().startswith(("https://", "http://"))
                    and url.strip() not in found
                ):
                    found.append(url.strip())
        if found:
            return found
    return []


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class TextingText:
    """A texting webhook as the message rules read it: the contract's normalised message,
    the ids that tie it to an agent's message (``raw.correlationId``, ``correlationId``,
    ``raw.chatMessageId``) and its media."""

    message: NormalisedTextingMessage
    raw_correlation_id: str | None = None
    correlation_id: str | None = None
    raw_chat_message_id: str | None = None
    media: tuple[str, ...] = ()


def parse_texting(payload: dict[str, Any]) -> TextingText:
    raw: dict[str, Any] = payload["raw"] if isinstance(payload.get("raw"), dict) else {}
    return TextingText(
        message=normalise_texting(payload),
        raw_correlation_id=_string(raw.get("correlationId")),
        correlation_id=_string(payload.get("correlationId")),
        raw_chat_message_id=_string(raw.get("chatMessageId")),
        media=tuple(media_urls(payload)),
    )


def _ids(*values: str | None) -> tuple[str, ...]:
    return tuple(v for v in values if v)


def plan_message(text: TextingText, canonical_type: str, event: EventRef, ctx: RuleContext) -> Plan:
    """M-1: an agent's echo is only reported delivered (M-1.2); a message posted before
    is only logged; otherwise, under the number's lock, an inbound keyword is applied
    (O-3), the texting contact and its conversation are found or created and the message
    is posted once."""
    msg = text.message
    direction: Literal["inbound", "outbound"] = (
        "inbound" if (msg.direction or canonical_type.removeprefix("message.")) == "inbound" else "outbound"
    )
    phone = to_e164(msg.from_number if direction == "inbound" else msg.to_number, ctx.region)
    log = SyncLogFor("texting_to_ghl", "message", msg.message_id or "unknown")
    if not phone:
        raise Permanent("No phone number in payload")
    if direction == "outbound":
        echo: EchoOfAgentMessage | None = yield FindOutboundEcho(
            _ids(text.raw_correlation_id, text.correlation_id, text.raw_chat_message_id),
            phone,
            body_sha256(msg.body),
            since=ctx.now - ECHO_WINDOW,
        )
        if echo is not None:
            if echo.texting_message_id is None and msg.message_id:
                yield LinkTextingMessage(echo.row_id, msg.message_id)
            yield log.row("skipped", "M-1.2", target_id=echo.ghl_message_id, message="echo_of_ghl_outbound")
            yield ReportMessageStatus(echo.ghl_message_id, "delivered")
            return Done("echo", "echo_of_ghl_outbound")
    if msg.message_id:
        posted: str | None = yield FindSyncedMessage(msg.message_id)
        if posted:
            yield log.row("success", "M-1", target_id=posted, message="already_synced")
            return Done("skipped", "already_synced")
    yield LockContact(phone)
    if direction == "inbound":
        yield from plan_keyword(msg.body, phone, event)
    ghl_id = yield ResolveTextingContact(phone)
    conversation_id = yield ResolveConversation(ghl_id)
    ghl_message_id = yield PostMessageOnce(
        texting_message_id=msg.message_id,
        event_key=event.dedupe_key,
        texting_conversation_id=msg.conversation_id,
        direction=direction,
        from_number=to_e164(msg.from_number, ctx.region),
        to_number=to_e164(msg.to_number, ctx.region),
        body=msg.body,
        date=msg.timestamp,
        attachments=text.media,
        ghl_id=ghl_id,
        conversation_id=conversation_id,
        log=log,
    )
    yield log.row("success", "M-1", target_id=ghl_id, details={"ghl_message_id": ghl_message_id})
    return Done("applied")


def plan_message_status(text: TextingText, ctx: RuleContext) -> Plan:
    """M-4: the delivery status of a message a GHL agent sent through us, reported to GHL
    (``sent``/``delivered`` → delivered, ``failed``/``undelivered`` → failed)."""
    msg = text.message
    log = SyncLogFor("texting_to_ghl", "message", msg.message_id or "unknown")
    name = (msg.status or msg.event_name.rsplit(".", 1)[-1]).lower()
    ghl_status = STATUS_TO_GHL.get(name)
    ids = _ids(msg.message_id, text.raw_chat_message_id, text.raw_correlation_id)
    row: AgentMessage | None = (yield FindAgentMessage(ids)) if ids else None
    if row is None or ghl_status is None:
        reason = "no_mapping" if row is None else f"status_not_reported:{name}"
        yield log.row("skipped", "M-4", message=reason)
        return Done("skipped", reason)
    error = None
    if ghl_status == "failed":
        error = {
            "code": msg.error_code or "failed",
            "type": "saas",
            "message": msg.error_message or "Message failed to deliver",
        }
    yield ReportMessageStatus(row.ghl_message_id, ghl_status, error)
    yield RecordDeliveryStatus(row.row_id, name)
    yield log.row("success", "M-4", target_id=row.ghl_message_id, message=f"status {ghl_status}")
    return Done("applied")
