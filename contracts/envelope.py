"""The accepted-event envelope carried on the WEBHOOKS stream (spec/inbound.md §2.1)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.json_body import parse_body
from contracts.subjects import EntityType, Source, webhook_subject

AuthMethod = Literal[
    "ed25519",
    "rsa",
    "workflow_token",
    "basic",
    "bearer",
    "hmac",
    "plain_secret",
    "insecure",
    "internal",
]

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EVENT_ID = "Dfm-Event-Id"
HEADER_RECEIVED_AT = "Dfm-Received-At"
HEADER_CORRELATION_ID = "Dfm-Correlation-Id"
# Set on re-deliveries we publish ourselves: "sweep:<run id>" or "replay:<command id>".
HEADER_REDRIVE = "Dfm-Redrive"


class AuthInfo(BaseModel):
    """How the sender was authenticated."""

    model_config = ConfigDict(frozen=True)

    method: AuthMethod
    verified: bool


class WebhookEvent(BaseModel):
    """One accepted webhook: envelope plus the body exactly as parsed.

    When the raw body is kept (GHL sources: the Verity forward needs the signed bytes), the
    wire form carries it once, as ``payload_raw_b64``, and ``payload`` is rebuilt from it on
    parse with the ingress's own parser (``contracts.json_body``), so a message is never
    twice the body's size. Messages that carry both (written before) parse as they are.
    """

    model_config = ConfigDict(frozen=True)

    event_id: UUID = Field(default_factory=uuid4)
    source: Source
    event_name: str
    event_type: str
    canonical_type: str
    entity_type: EntityType
    entity_id: str
    dedupe_key: str
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    location_id: str | None = None
    auth: AuthInfo
    outcome_hint: str | None = Field(
        default=None,
        description="Set by the ingress when the event is accepted only to be recorded "
        "(e.g. 'ignored:no_entity_id', 'ignored:foreign_location').",
    )
    payload: dict[str, Any]
    payload_raw_b64: str | None = None
    forward_signature: str | None = Field(
        default=None, description="the sender's x-ghl-signature header, for the Verity forward (F-1)"
    )

    @model_validator(mode="before")
    @classmethod
    def _payload_from_raw(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("payload") is None and data.get("payload_raw_b64"):
            raw = base64.b64decode(data["payload_raw_b64"])
            # the ingress already enforced its depth limit; whatever it accepted parses here
            data = {**data, "payload": parse_body(raw, max_depth=10_000)}
        return data

    @property
    def subject(self) -> str:
        """The webhook subject this event is published on."""
        return webhook_subject(self.source, self.entity_type, self.event_type)

    @property
    def effective_correlation_id(self) -> str:
        """The correlation id: explicit when given, otherwise the event id (C12)."""
        return self.correlation_id or str(self.event_id)

    @property
    def payload_raw(self) -> bytes | None:
        """The raw request body, when it was kept."""
        return base64.b64decode(self.payload_raw_b64) if self.payload_raw_b64 else None

    def nats_headers(self) -> dict[str, str]:
        """Headers for publishing this event (ARCHITECTURE.md §4)."""
        return {
            HEADER_MSG_ID: self.dedupe_key,
            HEADER_EVENT_ID: str(self.event_id),
            HEADER_RECEIVED_AT: self.received_at.isoformat(),
            HEADER_CORRELATION_ID: self.effective_correlation_id,
        }

    def to_bytes(self) -> bytes:
        """Wire form: JSON of the model, the payload once (raw when kept, else parsed)."""
        if self.payload_raw_b64:
            return self.model_dump_json(exclude={"payload"}).encode()
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WebhookEvent:
        """Parse the wire form; raises ``pydantic.ValidationError`` on malformed input."""
        return cls.model_validate_json(data)
