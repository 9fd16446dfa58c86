"""GHL conversation-provider Delivery URL body (spec/inbound.md §1.5)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from contracts.payloads._types import TOLERANT


class ProviderOutboundMessage(BaseModel):
    """``ProviderOutboundMessage``: an SMS (or e-mail) an agent sent from GHL."""

    model_config = TOLERANT
    message_id: str = Field(alias="messageId", min_length=1)
    type: str
    contact_id: str | None = Field(default=None, alias="contactId")
    location_id: str | None = Field(default=None, alias="locationId")
    conversation_id: str | None = Field(default=None, alias="conversationId")
    phone: str | None = None
    message: str | None = None
    attachments: list[Any] = Field(default_factory=list)
    user_id: str | None = Field(default=None, alias="userId")
