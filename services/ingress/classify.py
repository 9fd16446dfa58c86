"""Classification of accepted bodies: event name, type, entity, dedupe key (spec/inbound.md §2).

Pure functions of the parsed body (and a few settings passed in), so they are tested
without I/O and reused by ``dfm send``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.envelope import AuthInfo, WebhookEvent
from contracts.payloads import is_ghl_marketplace
from contracts.payloads.texting import normalise_texting
from contracts.phone import to_e164
from contracts.subjects import EntityType, Source
from contracts.tokens import MAX_KEY_CHARS, bounded_id, normalise_token


@dataclass(frozen=True)
class Classified:
    """An event to publish."""

    source: Source
    event_name: str
    event_type: str
    canonical_type: str
    entity_type: EntityType
    entity_id: str
    dedupe_key: str
    location_id: str | None = None
    outcome_hint: str | None = None

    def __post_init__(self) -> None:
        # ids and names from the body become indexed columns and the Nats-Msg-Id header:
        # bound them here, once for every source (contracts.tokens.bounded_id says why)
        for name, limit in (
            ("entity_id", None),
            ("event_name", None),
            ("location_id", None),
            ("dedupe_key", MAX_KEY_CHARS),
        ):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, bounded_id(value, *(() if limit is None else (limit,))))

    def envelope(
        self, auth: AuthInfo, payload: dict[str, Any], raw: bytes | None = None, signature: str | None = None
    ) -> WebhookEvent:
        """The accepted event (new event id, received now); ``raw`` and the sender's
        ``x-ghl-signature`` kept when given (the Verity forward, rule F-1, needs both)."""
        return WebhookEvent(
            source=self.source,
            event_name=self.event_name,
            event_type=self.event_type,
            canonical_type=self.canonical_type,
            entity_type=self.entity_type,
            entity_id=self.entity_id,
            dedupe_key=self.dedupe_key,
            location_id=self.location_id,
            auth=auth,
            outcome_hint=self.outcome_hint,
            payload=payload,
            payload_raw_b64=base64.b64encode(raw).decode() if raw is not None else None,
            forward_signature=signature,
        )


@dataclass(frozen=True)
class Ignored:
    """Answered 200 and not published (test probes, allow-list misses)."""

    reason: str


@dataclass(frozen=True)
class Rejected:
    """Answered 422 with ``error``."""

    error: str


Classification = Classified | Ignored | Rejected


def canon(body: Any) -> str:
    """Language-independent JSON form used for content hashes (spec §2.7)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def h16(text: str) -> str:
    """First 16 hex characters of SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _get(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _first_id(body: dict[str, Any], paths: tuple[str, ...], *, numbers: bool = True) -> str | None:
    for path in paths:
        value = _get(body, path)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _first_name(body: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


GENERIC_ID_PATHS = (
    "id",
    "contactId",
    "contact_id",
    "communication_id",
    "contact.id",
    "body.id",
    "body.contact_id",
    "body.communication_id",
)

# --- GHL (W1) -------------------------------------------------------------------------------

_GHL_MARKETPLACE: dict[str, tuple[EntityType, tuple[str, ...], str]] = {
    "ContactCreate": (EntityType.CONTACT, ("id",), "contact.created"),
    "ContactUpdate": (EntityType.CONTACT, ("id",), "contact.updated"),
    "ContactDelete": (EntityType.CONTACT, ("id",), "contact.deleted"),
    "ContactTagUpdate": (EntityType.CONTACT, ("id",), "contact.tags_changed"),
    "ContactDndUpdate": (EntityType.CONTACT, ("id",), "contact.dnd_changed"),
    "NoteCreate": (EntityType.NOTE, ("id",), "note.created"),
    "NoteUpdate": (EntityType.NOTE, ("id",), "note.updated"),
    "NoteDelete": (EntityType.NOTE, ("id",), "note.deleted"),
    "AppointmentCreate": (EntityType.APPOINTMENT, ("appointment.id",), "appointment.created"),
    "AppointmentUpdate": (EntityType.APPOINTMENT, ("appointment.id",), "appointment.updated"),
    "AppointmentDelete": (EntityType.APPOINTMENT, ("appointment.id",), "appointment.deleted"),
    "OpportunityStatusUpdate": (EntityType.OPPORTUNITY, ("id",), "opportunity.statusChanged"),
    "OpportunityStageUpdate": (EntityType.OPPORTUNITY, ("id",), "pipeline.stageChanged"),
    "InboundMessage": (EntityType.MESSAGE, ("messageId", "conversationId"), "conversation.message"),
    "OutboundMessage": (EntityType.MESSAGE, ("messageId", "conversationId"), "conversation.message"),
    "ConversationUnreadUpdate": (EntityType.CONVERSATION, ("id",), "conversation.unread"),
}
_CONTACT_IDS = ("contact_id", "contactId", "id")
_TAG_IDS = ("contactId", "contact.id", "id")
_APPOINTMENT_IDS = ("id", "appointmentId", "appointment.id")
_GHL_DOTTED: dict[str, tuple[EntityType, tuple[str, ...], str]] = {
    "contact.created": (EntityType.CONTACT, GENERIC_ID_PATHS, "contact.created"),
    "contact.updated": (EntityType.CONTACT, _CONTACT_IDS, "contact.updated"),
    "contact.changed": (EntityType.CONTACT, _CONTACT_IDS, "contact.updated"),
    "contact.deleted": (EntityType.CONTACT, _CONTACT_IDS, "contact.deleted"),
    "tag.added": (EntityType.TAG, _TAG_IDS, "tag.added"),
    "contact.tag.added": (EntityType.TAG, _TAG_IDS, "tag.added"),
    "tag.removed": (EntityType.TAG, _TAG_IDS, "tag.removed"),
    "contact.tag.removed": (EntityType.TAG, _TAG_IDS, "tag.removed"),
    "appointment.created": (EntityType.APPOINTMENT, _APPOINTMENT_IDS, "appointment.created"),
    "appointment.updated": (EntityType.APPOINTMENT, _APPOINTMENT_IDS, "appointment.updated"),
    "opportunity.statusChanged": (EntityType.OPPORTUNITY, ("id",), "opportunity.statusChanged"),
    "pipeline.stageChanged": (EntityType.OPPORTUNITY, ("id",), "pipeline.stageChanged"),
}
_APPOINTMENT_HINTS = ("startTime", "start_time", "endTime", "end_time", "calendarId", "calendar_id")


def infer_ghl_event_name(body: dict[str, Any]) -> str | None:
    """Name for workflow bodies without one (spec §2.3.2); None means a test ping."""
    if any(key in body for key in _APPOINTMENT_HINTS):
        return "appointment.created"
    if "contactId" in body or "contact_id" in body:
        return "contact.updated"
    if "id" in body and any(k in body for k in ("firstName", "first_name", "email")):
        return "contact.updated"
    return None


def _ghl_row(name: str, body: dict[str, Any]) -> tuple[EntityType, tuple[str, ...], str, bool]:
    """(entity type, id paths, canonical type, numbers allowed) for a GHL event name."""
    if name in _GHL_MARKETPLACE:
        entity, paths, canonical = _GHL_MARKETPLACE[name]
        return entity, paths, canonical, False
    if name.startswith("Opportunity") and "." not in name:
        return EntityType.OPPORTUNITY, ("id",), "opportunity.other", False
    if name in _GHL_DOTTED:
        entity, paths, canonical = _GHL_DOTTED[name]
        return entity, paths, canonical, paths is GENERIC_ID_PATHS
    if "." not in name and name[:1].isupper():
        return EntityType.UNKNOWN, ("id",), "ghl.other", False
    if "tag" in name.lower() or "segment" in name.lower():
        return EntityType.TAG, _TAG_IDS, "tag.other", False
    return EntityType.UNKNOWN, GENERIC_ID_PATHS, "ghl.other", False


def classify_ghl(body: dict[str, Any], *, expected_location_id: str | None) -> Classification:
    """W1 bodies of all three families (spec §2.3)."""
    name = _first_name(body, ("event", "type", "eventType")) or infer_ghl_event_name(body)
    if name is None:
        return Ignored("test_ping")
    entity, paths, canonical, numbers = _ghl_row(name, body)
    entity_id = _first_id(body, paths, numbers=numbers)
    token = normalise_token(name)
    hint: str | None = None
    if entity_id is None:
        entity, entity_id, hint = EntityType.UNKNOWN, "", "ignored:no_entity_id"
    location = body.get("locationId") if isinstance(body.get("locationId"), str) else None
    if location is None and isinstance(_get(body, "location.id"), str):
        location = _get(body, "location.id")
    if hint is None and is_ghl_marketplace(body) and expected_location_id and location != expected_location_id:
        hint = "ignored:foreign_location"
    webhook_id = body.get("webhookId")
    if isinstance(webhook_id, str) and webhook_id.strip():
        dedupe = f"ghl:wh:{webhook_id.strip()}"
    else:
        dedupe = f"ghl:{token}:{entity_id}:{h16(canon(body))}"
    return Classified(Source.GHL, name, token, canonical, entity, entity_id, dedupe, location, hint)


# --- GHL provider delivery (W2) ---------------------------------------------------------------


def classify_provider(body: dict[str, Any], *, region: str = "US") -> Classification:
    """W2 ``ProviderOutboundMessage`` bodies (spec §1.5); ``status`` is ignored."""
    message_id = body.get("messageId")
    if not isinstance(message_id, str) or not message_id.strip():
        return Rejected("messageId is required")
    channel = body.get("type")
    channel_l = channel.lower() if isinstance(channel, str) else ""
    location = body.get("locationId") if isinstance(body.get("locationId"), str) else None
    dedupe = f"ghl-provider:{message_id.strip()}"
    if channel_l != "sms":
        kind = "email" if channel_l == "email" else "other"
        return Classified(
            Source.GHL_PROVIDER,
            str(channel or "unknown"),
            f"provider_outbound_{kind}",
            f"provider.{kind}",
            EntityType.PROVIDER_MESSAGE,
            message_id.strip(),
            dedupe,
            location,
            "ignored:channel_not_supported",
        )
    if to_e164(body.get("phone"), region) is None:
        return Rejected("phone must be a valid phone number")
    text = body.get("message")
    attachments = body.get("attachments")
    if not isinstance(text, str):
        return Rejected("message must be a string")
    if not text.strip() and not (isinstance(attachments, list) and attachments):
        return Rejected("message is empty and there are no attachments")
    return Classified(
        Source.GHL_PROVIDER,
        str(channel),
        "provider_outbound_sms",
        "provider_outbound_sms",
        EntityType.PROVIDER_MESSAGE,
        message_id.strip(),
        dedupe,
        location,
    )


# --- Aloware (W3/W4) -----------------------------------------------------------------------------

_ALOWARE: dict[str, tuple[EntityType, str]] = {
    "contact_created": (EntityType.CONTACT, "contact.created"),
    "contact_updated": (EntityType.CONTACT, "contact.updated"),
    "contact_disposed": (EntityType.CONTACT, "contact.disposed"),
    "contact_dnc_updated": (EntityType.CONTACT, "contact.dnc_updated"),
    "call_disposed": (EntityType.CALL, "call.disposed"),
    "transcription_saved": (EntityType.TRANSCRIPTION, "call.transcription_saved"),
    "call_summarized": (EntityType.CALL_SUMMARY, "call.summarized"),
    "recording_saved": (EntityType.RECORDING, "call.recording_saved"),
    "voicemail_saved": (EntityType.VOICEMAIL, "call.voicemail_saved"),
    "communication_initiated": (EntityType.COMMUNICATION, "communication.initiated"),
    "communication_disposed": (EntityType.COMMUNICATION, "communication.disposed"),
    "appointment_saved": (EntityType.APPOINTMENT, "appointment.saved"),
}
_CALL_FAMILIES = ("outbound_phone_call_", "inbound_phone_call_")


def aloware_event_name(body: dict[str, Any]) -> str | None:
    """First string of ``event``/``type``/``eventType``, else ``data.event`` (spec §1.6)."""
    name = _first_name(body, ("event", "type", "eventType"))
    if name is not None:
        return name
    nested = _get(body, "data.event")
    return str(nested) if nested is not None and nested != "" else None


def aloware_allowed(name: str, allow_list: list[str]) -> bool:
    """The allow-list check of spec §1.6 step 3, compared on normalised tokens."""
    if not allow_list:
        return True
    token = normalise_token(name)
    entries = [normalise_token(entry) for entry in allow_list]
    if token in entries:
        return True
    return any(token.startswith(family) and any(e.startswith(family) for e in entries) for family in _CALL_FAMILIES)


def classify_aloware(body: dict[str, Any], *, allow_list: list[str]) -> Classification:
    """W3/W4 bodies (spec §2.4); integer ids become strings (A2)."""
    name = aloware_event_name(body)
    if name is None:
        return Ignored("test_ping")
    if not aloware_allowed(name, allow_list):
        return Ignored("event_not_allowed")
    token = normalise_token(name)
    if token.startswith(_CALL_FAMILIES):
        entity, canonical = EntityType.CALL, "call.completed"
    else:
        entity, canonical = _ALOWARE.get(token, (EntityType.UNKNOWN, "aloware.other"))
    entity_id = _first_id(body, GENERIC_ID_PATHS)
    hint = None
    if entity_id is None:
        entity, entity_id, hint = EntityType.UNKNOWN, "", "ignored:no_entity_id"
    dedupe = f"aloware:{token}:{entity_id}:{h16(canon(body))}"
    return Classified(Source.ALOWARE, name, token, canonical, entity, entity_id, dedupe, None, hint)


# --- Texting (W5) --------------------------------------------------------------------------------

_TEXTING: dict[str, str] = {
    "message.received": "message.inbound",
    "message.sent": "message.outbound",
    "message.delivered": "message.status",
    "message.failed": "message.status",
    "conversation.created": "conversation.created",
    "optout.stop": "optout.stop",
    "optout.help": "optout.help",
}


def classify_texting(body: dict[str, Any]) -> Classification:
    """W5 bodies (spec §2.5, §2.7). Unknown event types are accepted (outcome ignored)."""
    msg = normalise_texting(body)
    name = msg.event_name
    low = name.lower()
    if "message" in low:
        entity = EntityType.MESSAGE
    elif "conversation" in low:
        entity = EntityType.CONVERSATION
    elif "optout" in low:
        entity = EntityType.OPTOUT
    else:
        entity = EntityType.MESSAGE
    canonical = _TEXTING.get(name, "texting.other")
    entity_id = (
        msg.message_id
        or msg.conversation_id
        or h16(f"{msg.body or ''}:{msg.timestamp or ''}:{msg.from_number or ''}:{msg.to_number or ''}")
    )
    key_entity = msg.message_id or h16(canon(body))
    inner = h16(f"texting:{name}:{key_entity}:{msg.timestamp or ''}")
    dedupe = f"texting:{name}:{key_entity}:{inner}"
    return Classified(Source.TEXTING, name, normalise_token(name), canonical, entity, entity_id, dedupe)


# --- Broadcast (W6) ------------------------------------------------------------------------------

_BROADCAST_ANALYTICS = frozenset({"analytics_updated", "broadcast_completed"})


def classify_broadcast(body: dict[str, Any], *, received_at: datetime) -> Classification:
    """W6 bodies (spec §1.8, §2.6, §2.7)."""
    broadcast_id = body.get("broadcastId")
    event_type = body.get("eventType")
    if not (isinstance(broadcast_id, str) and broadcast_id.strip()) or not (
        isinstance(event_type, str) and event_type.strip()
    ):
        return Rejected("broadcastId and eventType are required")
    canonical = "broadcast.analytics" if event_type in _BROADCAST_ANALYTICS else "broadcast.other"
    stamp = body.get("timestamp")
    if not (isinstance(stamp, str) and stamp):
        stamp = received_at.replace(second=0, microsecond=0).isoformat()
    inner = h16(f"broadcast:{broadcast_id}:{event_type}:{stamp}")
    return Classified(
        Source.BROADCAST,
        event_type,
        normalise_token(event_type),
        canonical,
        EntityType.BROADCAST,
        broadcast_id,
        f"broadcast:{broadcast_id}:{event_type}:{inner}",
        None,
        None if canonical == "broadcast.analytics" else "ignored:unknown_broadcast_event",
    )
