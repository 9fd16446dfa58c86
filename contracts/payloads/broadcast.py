"""Broadcast analytics webhook body (spec/inbound.md §2.6)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from contracts.payloads._types import TOLERANT


class BroadcastEvent(BaseModel):
    """``{"broadcastId", "eventType", "timestamp"?}``."""

    model_config = TOLERANT
    broadcast_id: str = Field(alias="broadcastId", min_length=1)
    event_type: str = Field(alias="eventType", min_length=1)
    timestamp: str | None = None
