"""Aloware webhook bodies: ``{"event": "<name>", "body": {...}}`` (spec/inbound.md §2.4).

Ids arrive as strings or integers; both are kept as strings (A2).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from contracts.payloads._types import TOLERANT, IdStr, Tags


class AlowareContact(BaseModel):
    """The contact inside contact events."""

    model_config = TOLERANT
    id: IdStr
    first_name: str | None = None
    last_name: str | None = None
    name: str | None = None
    phone_number: str | None = None
    email: str | None = None
    lead_source: str | None = None
    intake_source: str | None = None
    disposition_status: str | None = None
    is_dnc: bool | None = None
    is_blocked: bool | None = None
    user_id: IdStr | None = None
    tags: Tags = Field(default_factory=list)
    external_ids: dict[str, Any] = Field(default_factory=dict)
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    updated_at: str | None = None


class AlowareCall(BaseModel):
    """The call inside call events (``Call Disposed``, ``*PhoneCall-<State>``)."""

    model_config = TOLERANT
    id: IdStr
    contact_id: IdStr | None = None
    user_id: IdStr | None = None
    direction: str | None = None
    disposition: str | None = None
    status: str | None = None
    resolution: str | None = None
    duration: int | None = None
    talk_time: int | None = None
    recording_url: str | None = None
    lead_number: str | None = None
    incoming_number: str | None = None
    created_at: str | None = None
    ended_at: str | None = None
    # the contact object some call webhooks embed (CL-1), and the caller's rating
    contact: dict[str, Any] | None = None
    csat_score: int | float | str | None = None


class AlowareCallArtifact(BaseModel):
    """Transcription, summary, recording and voicemail bodies."""

    model_config = TOLERANT
    id: IdStr
    call_id: IdStr | None = None
    communication_id: IdStr | None = None
    contact_id: IdStr | None = None
    text: str | None = None
    summary: str | None = None
    outcomes: list[Any] | None = None
    url: str | None = None
    voicemail_url: str | None = None
    duration: int | None = None
    created_at: str | None = None


class AlowareCommunication(BaseModel):
    """Communication Initiated / Disposed bodies."""

    model_config = TOLERANT
    id: IdStr
    communication_id: IdStr | None = None
    contact_id: IdStr | None = None
    channel: str | None = None
    direction: str | None = None
    status: str | None = None
    outcome: str | None = None


class AlowareAppointment(BaseModel):
    """Appointment Saved body."""

    model_config = TOLERANT
    id: IdStr
    contact_id: IdStr | None = None
    title: str | None = None


class _AlowareEvent(BaseModel):
    model_config = TOLERANT
    event: str


class AlowareContactEvent(_AlowareEvent):
    """Contact Created / Updated / Disposed / DNC Updated."""

    body: AlowareContact


class AlowareCallEvent(_AlowareEvent):
    """Call Disposed, OutboundPhoneCall-*, InboundPhoneCall-*."""

    body: AlowareCall


class AlowareCallArtifactEvent(_AlowareEvent):
    """Transcription Saved, Call Summarized, Recording Saved, Voicemail Saved."""

    body: AlowareCallArtifact


class AlowareCommunicationEvent(_AlowareEvent):
    """Communication Initiated / Disposed."""

    body: AlowareCommunication


class AlowareAppointmentEvent(_AlowareEvent):
    """Appointment Saved."""

    body: AlowareAppointment


class AlowareOtherEvent(BaseModel):
    """Anything else: only the envelope is known."""

    model_config = TOLERANT
    event: str | None = None
    body: dict[str, Any] = Field(default_factory=dict)
