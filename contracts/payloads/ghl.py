"""GHL webhook bodies: marketplace (family A), workflow (B) and dotted names (C).

See spec/inbound.md §2.3 and the vendor pages in tests/vendor/ghl/docs/webhook-events.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from contracts.payloads._types import TOLERANT, IdStr, Tags


class GhlCustomField(BaseModel):
    """A custom field value as GHL sends it inside contact bodies."""

    model_config = TOLERANT
    id: str
    value: Any = None


class GhlMarketplaceEvent(BaseModel):
    """Common header of every family-A (signed marketplace) body."""

    model_config = TOLERANT
    type: str
    location_id: str = Field(alias="locationId")
    timestamp: str | None = None
    webhook_id: str | None = Field(default=None, alias="webhookId")


class GhlContactEvent(GhlMarketplaceEvent):
    """ContactCreate / ContactUpdate / ContactDelete / ContactTagUpdate / ContactDndUpdate."""

    id: str
    first_name: str | None = Field(default=None, alias="firstName")
    last_name: str | None = Field(default=None, alias="lastName")
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    tags: Tags = Field(default_factory=list)
    dnd: bool | None = None
    dnd_settings: dict[str, Any] | None = Field(default=None, alias="dndSettings")
    assigned_to: str | None = Field(default=None, alias="assignedTo")
    custom_fields: list[GhlCustomField] = Field(default_factory=list, alias="customFields")
    date_updated: str | None = Field(default=None, alias="dateUpdated")


class GhlNoteEvent(GhlMarketplaceEvent):
    """NoteCreate / NoteUpdate / NoteDelete."""

    id: str
    body: str | None = None
    contact_id: str | None = Field(default=None, alias="contactId")


class GhlAppointment(BaseModel):
    """The nested appointment of family-A appointment events."""

    model_config = TOLERANT
    id: str
    calendar_id: str | None = Field(default=None, alias="calendarId")
    contact_id: str | None = Field(default=None, alias="contactId")
    title: str | None = None
    start_time: str | None = Field(default=None, alias="startTime")
    end_time: str | None = Field(default=None, alias="endTime")
    appointment_status: str | None = Field(default=None, alias="appointmentStatus")


class GhlAppointmentEvent(GhlMarketplaceEvent):
    """AppointmentCreate / AppointmentUpdate / AppointmentDelete (id nested)."""

    appointment: GhlAppointment


class GhlOpportunityEvent(GhlMarketplaceEvent):
    """Opportunity* marketplace events."""

    id: str
    contact_id: str | None = Field(default=None, alias="contactId")
    pipeline_id: str | None = Field(default=None, alias="pipelineId")
    pipeline_stage_id: str | None = Field(default=None, alias="pipelineStageId")
    status: str | None = None
    assigned_to: str | None = Field(default=None, alias="assignedTo")


class GhlMessageEvent(GhlMarketplaceEvent):
    """InboundMessage / OutboundMessage."""

    contact_id: str | None = Field(default=None, alias="contactId")
    conversation_id: str | None = Field(default=None, alias="conversationId")
    message_id: str | None = Field(default=None, alias="messageId")
    message_type: str | None = Field(default=None, alias="messageType")
    direction: str | None = None
    body: str | None = None
    status: str | None = None


class GhlConversationUnreadEvent(GhlMarketplaceEvent):
    """ConversationUnreadUpdate."""

    id: str
    contact_id: str | None = Field(default=None, alias="contactId")
    unread_count: int | None = Field(default=None, alias="unreadCount")


class GhlOtherMarketplaceEvent(GhlMarketplaceEvent):
    """Any other PascalCase marketplace event (TaskCreate, AppInstall, ...)."""

    id: str | None = None


class GhlWorkflowContact(BaseModel):
    """Family B: a workflow "Webhook" action body about a contact (snake_case)."""

    model_config = TOLERANT
    contact_id: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    tags: Tags = Field(default_factory=list)
    location: dict[str, Any] | None = None
    workflow: dict[str, Any] | None = None
    custom_data: dict[str, Any] = Field(default_factory=dict, alias="customData")


class GhlWorkflowAppointment(BaseModel):
    """Family B (or C): an appointment body without an event name."""

    model_config = TOLERANT
    id: str | None = None
    appointment_id: str | None = Field(default=None, alias="appointmentId")
    contact_id: str | None = Field(default=None, alias="contactId")
    calendar_id: str | None = Field(default=None, alias="calendarId")
    title: str | None = None
    start_time: str | None = Field(default=None, alias="startTime")
    end_time: str | None = Field(default=None, alias="endTime")
    phone: str | None = None
    email: str | None = None
    appointment_status: str | None = Field(default=None, alias="appointmentStatus")


class GhlDottedContactEvent(BaseModel):
    """Family C: ``contact.updated`` / ``contact.created`` / ``contact.deleted``."""

    model_config = TOLERANT
    event: str | None = None
    id: IdStr | None = None
    contact_id: IdStr | None = Field(default=None, alias="contactId")
    first_name: str | None = Field(default=None, alias="firstName")
    last_name: str | None = Field(default=None, alias="lastName")
    email: str | None = None
    phone: str | None = None
    tags: Tags = Field(default_factory=list)


class GhlTagEvent(BaseModel):
    """Family C: ``tag.added`` / ``tag.removed`` (tag name never read from ``name``, G6)."""

    model_config = TOLERANT
    event: str | None = None
    contact_id: str | None = Field(default=None, alias="contactId")
    tag_name: str | None = Field(default=None, alias="tagName")
    tag: str | None = None
    tags: Tags = Field(default_factory=list)
    location_id: str | None = Field(default=None, alias="locationId")


class GhlDottedOpportunityEvent(BaseModel):
    """Family C: ``opportunity.statusChanged`` / ``pipeline.stageChanged``."""

    model_config = TOLERANT
    event: str | None = None
    id: str
    contact_id: str | None = Field(default=None, alias="contactId")
    pipeline_stage: str | None = Field(default=None, alias="pipelineStage")
    stage: str | None = None
    status: str | None = None
    location_id: str | None = Field(default=None, alias="locationId")
