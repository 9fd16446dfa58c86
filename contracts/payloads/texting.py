"""Texting (Verity) webhook bodies and their normalised view (spec/inbound.md §2.5)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from contracts.payloads._types import TOLERANT

KNOWN_STATUSES = frozenset({"queued", "sent", "delivered", "failed", "received"})


class TextingEvent(BaseModel):
    """A texting webhook as sent: flat, or with a nested ``message``/``data`` object."""

    model_config = TOLERANT
    type: str | None = None
    event_type: str | None = Field(default=None, alias="eventType")
    event: str | None = None
    message: dict[str, Any] | str | None = None
    data: dict[str, Any] | None = None
    message_id: str | None = Field(default=None, alias="messageId")
    conversation_id: str | None = Field(default=None, alias="conversationId")
    direction: str | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    body: str | None = None
    timestamp: str | None = None
    status: str | None = None
    error_code: str | int | None = Field(default=None, alias="errorCode")
    error_message: str | None = Field(default=None, alias="errorMessage")


class NormalisedTextingMessage(BaseModel):
    """The normalised form every texting rule reads (phones still as sent here)."""

    model_config = TOLERANT
    event_name: str
    message_id: str | None = None
    conversation_id: str | None = None
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    body: str | None = None
    timestamp: str | None = None
    status: str | None = None
    error_code: str | None = None
    error_message: str | None = None


def _first_str(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None


def _direction(value: str | None) -> str | None:
    if not value:
        return None
    low = value.lower()
    if low in ("inbound", "outbound"):
        return low
    if "inbound" in low or "incoming" in low:
        return "inbound"
    if "outbound" in low or "outgoing" in low:
        return "outbound"
    return None


def normalise_texting(payload: dict[str, Any]) -> NormalisedTextingMessage:
    """Apply the original's normalisation (spec/inbound.md §2.5) to a parsed body."""
    root = payload
    m: dict[str, Any]
    if isinstance(root.get("message"), dict):
        m = root["message"]
    elif isinstance(root.get("data"), dict):
        m = root["data"]
    else:
        m = root
    status = _first_str(m.get("status"), root.get("status"))
    error_code = m.get("errorCode", root.get("errorCode"))
    return NormalisedTextingMessage(
        event_name=_first_str(root.get("type"), root.get("eventType"), root.get("event")) or "unknown",
        message_id=_first_str(m.get("id"), m.get("messageId"), root.get("messageId")),
        conversation_id=_first_str(m.get("conversationId"), root.get("conversationId")),
        direction=_direction(_first_str(m.get("direction"), root.get("direction"))),
        from_number=_first_str(m.get("from"), root.get("from")),
        to_number=_first_str(m.get("to"), root.get("to")),
        body=_first_str(m.get("body"), m.get("text"), m.get("message"), root.get("body")),
        timestamp=_first_str(m.get("timestamp"), m.get("createdAt"), m.get("date"), root.get("timestamp")),
        status=status if status in KNOWN_STATUSES else None,
        error_code=str(error_code) if error_code is not None else None,
        error_message=_first_str(m.get("errorMessage"), m.get("error"), root.get("errorMessage")),
    )
