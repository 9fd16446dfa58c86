"""Typed payload models per source and event type, and the lookup from an envelope."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.payloads import aloware, broadcast, ghl, provider, texting
from contracts.subjects import Source


class UntypedPayload(BaseModel):
    """Bodies of events we record but do not interpret (``*.other``, probes)."""

    model_config = ConfigDict(extra="allow", frozen=True)


_GHL_MARKETPLACE_PREFIXES: tuple[tuple[str, type[BaseModel]], ...] = (
    ("Contact", ghl.GhlContactEvent),
    ("Note", ghl.GhlNoteEvent),
    ("Appointment", ghl.GhlAppointmentEvent),
    ("Opportunity", ghl.GhlOpportunityEvent),
    ("InboundMessage", ghl.GhlMessageEvent),
    ("OutboundMessage", ghl.GhlMessageEvent),
    ("ConversationUnreadUpdate", ghl.GhlConversationUnreadEvent),
)

_ALOWARE_BY_CANONICAL: dict[str, type[BaseModel]] = {
    "contact.created": aloware.AlowareContactEvent,
    "contact.updated": aloware.AlowareContactEvent,
    "contact.disposed": aloware.AlowareContactEvent,
    "contact.dnc_updated": aloware.AlowareContactEvent,
    "call.disposed": aloware.AlowareCallEvent,
    "call.completed": aloware.AlowareCallEvent,
    "call.transcription_saved": aloware.AlowareCallArtifactEvent,
    "call.summarized": aloware.AlowareCallArtifactEvent,
    "call.recording_saved": aloware.AlowareCallArtifactEvent,
    "call.voicemail_saved": aloware.AlowareCallArtifactEvent,
    "communication.initiated": aloware.AlowareCommunicationEvent,
    "communication.disposed": aloware.AlowareCommunicationEvent,
    "appointment.saved": aloware.AlowareAppointmentEvent,
}


def is_ghl_marketplace(payload: dict[str, Any]) -> bool:
    """Family A: a PascalCase ``type`` and a ``locationId`` (spec/inbound.md §2.3.1)."""
    name = payload.get("type")
    return (
        isinstance(name, str) and name[:1].isupper() and "." not in name and isinstance(payload.get("locationId"), str)
    )


def payload_model(source: Source, canonical_type: str, payload: dict[str, Any]) -> type[BaseModel]:
    """The typed model for a body, chosen by source, canonical type and body family."""
    if source is Source.GHL:
        if is_ghl_marketplace(payload):
            name = str(payload["type"])
            for prefix, model in _GHL_MARKETPLACE_PREFIXES:
                if name.startswith(prefix):
                    return model
            return ghl.GhlOtherMarketplaceEvent
        family, _, _ = canonical_type.partition(".")
        if family == "contact":
            if "contact_id" in payload and "event" not in payload:
                return ghl.GhlWorkflowContact
            return ghl.GhlDottedContactEvent
        if family == "tag":
            return ghl.GhlTagEvent
        if family == "appointment":
            return ghl.GhlWorkflowAppointment
        if family in ("opportunity", "pipeline"):
            return ghl.GhlDottedOpportunityEvent
        return UntypedPayload
    if source is Source.GHL_PROVIDER:
        return provider.ProviderOutboundMessage
    if source is Source.ALOWARE:
        return _ALOWARE_BY_CANONICAL.get(canonical_type, aloware.AlowareOtherEvent)
    if source is Source.TEXTING:
        return texting.TextingEvent
    if source is Source.BROADCAST:
        return broadcast.BroadcastEvent
    return UntypedPayload


def parse_payload(source: Source, canonical_type: str, payload: dict[str, Any]) -> BaseModel:
    """Validate a body into its typed model; raises ``pydantic.ValidationError``."""
    return payload_model(source, canonical_type, payload).model_validate(payload)


__all__ = [
    "UntypedPayload",
    "aloware",
    "broadcast",
    "ghl",
    "is_ghl_marketplace",
    "parse_payload",
    "payload_model",
    "provider",
    "texting",
]
