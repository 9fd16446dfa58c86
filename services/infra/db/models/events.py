"""The accepted events (spec/inbound.md §5.1–§5.3) and what happened to them: deliveries, attempts,
dead letters, quarantine, the ingress outbox.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from services.infra.db.models.base import (
    EVENT_STATUSES,
    OUTCOMES,
    Base,
    EventStatusColumns,
    _event_status_args,
    _in,
    _now,
    _ts,
    _uuid_pk,
)


class WebhookEventRow(EventStatusColumns, Base):
    """GHL, GHL provider and Aloware events (spec/inbound.md §5.1)."""

    __tablename__ = "webhook_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    received_at: Mapped[datetime] = _now()
    source: Mapped[str] = mapped_column(Text, nullable=False)
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    event_token: Mapped[str] = mapped_column(Text, nullable=False)
    canonical_type: Mapped[str] = mapped_column(Text, nullable=False)
    entity_type: Mapped[str] = mapped_column(Text, nullable=False)
    entity_id: Mapped[str] = mapped_column(Text, nullable=False)
    location_id: Mapped[str | None] = mapped_column(Text)
    payload_json: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    payload_raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    dedupe_key: Mapped[str] = mapped_column(Text, nullable=False)
    stream_seq: Mapped[int | None] = mapped_column(BigInteger)  # JetStream sequences are u64

    __table_args__ = (
        *_event_status_args("webhook_events"),
        UniqueConstraint("dedupe_key"),
        CheckConstraint(_in("source", ("ghl", "ghl_provider", "aloware")), name="source"),
        Index("ix_webhook_events_source_status", "source", "status"),
        Index("ix_webhook_events_entity", "entity_type", "entity_id"),
        Index("ix_webhook_events_entity_order", "source", "entity_type", "entity_id", "received_at"),
        # an id pasted into the console's search, whatever its entity type (0008)
        Index("ix_webhook_events_entity_id", "entity_id"),
    )


class TextingWebhookEventRow(EventStatusColumns, Base):
    """Texting (Verity) events (spec/inbound.md §5.2)."""

    __tablename__ = "texting_webhook_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    received_at: Mapped[datetime] = _now()
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    canonical_type: Mapped[str] = mapped_column(Text, nullable=False)
    entity_type: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'message'"))
    entity_id: Mapped[str | None] = mapped_column(Text)
    conversation_id: Mapped[str | None] = mapped_column(Text)
    from_number: Mapped[str | None] = mapped_column(Text)
    to_number: Mapped[str | None] = mapped_column(Text)
    payload_json: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    dedupe_key: Mapped[str] = mapped_column(Text, nullable=False)
    stream_seq: Mapped[int | None] = mapped_column(BigInteger)  # JetStream sequences are u64

    __table_args__ = (
        *_event_status_args("texting_webhook_events"),
        UniqueConstraint("dedupe_key"),
        Index("ix_texting_webhook_events_entity_id", "entity_id"),
        Index("ix_texting_webhook_events_conversation_id", "conversation_id"),
        Index("ix_texting_webhook_events_from_number", "from_number"),
        Index("ix_texting_webhook_events_to_number", "to_number"),
    )


class BroadcastWebhookEventRow(EventStatusColumns, Base):
    """Broadcast analytics events (spec/inbound.md §5.3)."""

    __tablename__ = "broadcast_webhook_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    received_at: Mapped[datetime] = _now()
    broadcast_id: Mapped[str] = mapped_column(Text, nullable=False)
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    payload_json: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    dedupe_key: Mapped[str] = mapped_column(Text, nullable=False)
    stream_seq: Mapped[int | None] = mapped_column(BigInteger)  # JetStream sequences are u64

    __table_args__ = (
        *_event_status_args("broadcast_webhook_events"),
        UniqueConstraint("dedupe_key"),
        Index("ix_broadcast_webhook_events_broadcast_id", "broadcast_id"),
    )


TableName = Literal["webhook", "texting", "broadcast"]
TABLE_NAMES: tuple[TableName, ...] = ("webhook", "texting", "broadcast")

EventRow = WebhookEventRow | TextingWebhookEventRow | BroadcastWebhookEventRow

EVENT_TABLES: dict[TableName, type[EventRow]] = {
    "webhook": WebhookEventRow,
    "texting": TextingWebhookEventRow,
    "broadcast": BroadcastWebhookEventRow,
}


class QuarantineEventRow(Base):
    """Operator quarantine records (spec/inbound.md §5.4)."""

    __tablename__ = "quarantine_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    event_source: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    quarantined_at: Mapped[datetime] = _now()
    quarantined_by: Mapped[str | None] = mapped_column(Text)
    released_at: Mapped[datetime | None] = _ts()
    released_by: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("event_source", ("webhook", "texting", "broadcast")), name="source"),
        Index("ix_quarantine_events_event_id", "event_id"),
        Index("ix_quarantine_events_event_source", "event_source"),
        Index(
            "uq_quarantine_events_active",
            "event_id",
            "event_source",
            unique=True,
            postgresql_where=text("released_at IS NULL"),
        ),
    )


class EventDeliveryRow(Base):
    """Per-consumer state of one event (spec/inbound.md §5.8)."""

    __tablename__ = "event_deliveries"

    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    consumer: Mapped[str] = mapped_column(Text, nullable=False)
    event_table: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    outcome: Mapped[str | None] = mapped_column(Text)
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = _ts()
    claimed_at: Mapped[datetime | None] = _ts()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        PrimaryKeyConstraint("event_id", "consumer"),
        CheckConstraint(_in("status", EVENT_STATUSES), name="status"),
        CheckConstraint(_in("outcome", OUTCOMES, nullable=True), name="outcome"),
        CheckConstraint(_in("event_table", ("webhook", "texting", "broadcast")), name="table"),
        Index("ix_event_deliveries_consumer_status_next", "consumer", "status", "next_attempt_at"),
    )


class EventAttemptRow(Base):
    """One delivery of an event to one consumer, with what it did: the trace's raw material
    (``dfm trace``). Written in the same transaction as the delivery's end state."""

    __tablename__ = "event_attempts"

    id: Mapped[uuid.UUID] = _uuid_pk()
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    consumer: Mapped[str] = mapped_column(Text, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    stream_seq: Mapped[int | None] = mapped_column(BigInteger)
    num_delivered: Mapped[int | None] = mapped_column(Integer)
    replay_of: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    finished_at: Mapped[datetime] = _now()
    status: Mapped[str] = mapped_column(Text, nullable=False)
    outcome: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    vendor_calls: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    mappings: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))

    __table_args__ = (
        CheckConstraint(_in("status", ("done", "error", "dead")), name="status"),
        Index("ix_event_attempts_event_id_started_at", "event_id", "started_at"),
        Index("ix_event_attempts_finished_at", "finished_at"),
    )


class DeadLetterRow(Base):
    """A stream message JetStream gave up on (max deliveries) or a consumer terminated."""

    __tablename__ = "dead_letters"

    id: Mapped[uuid.UUID] = _uuid_pk()
    recorded_at: Mapped[datetime] = _now()
    stream: Mapped[str] = mapped_column(Text, nullable=False)
    consumer: Mapped[str] = mapped_column(Text, nullable=False)
    stream_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    subject: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    deliveries: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        UniqueConstraint("stream", "consumer", "stream_seq"),
        CheckConstraint(_in("kind", ("max_deliveries", "terminated")), name="kind"),
        Index("ix_dead_letters_recorded_at", "recorded_at"),
    )


class IngressOutboxRow(Base):
    """Events accepted while NATS could not ack; drained to the stream (spec/inbound.md §5.8)."""

    __tablename__ = "ingress_outbox"

    id: Mapped[uuid.UUID] = _uuid_pk()
    subject: Mapped[str] = mapped_column(Text, nullable=False)
    dedupe_key: Mapped[str] = mapped_column(Text, nullable=False)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    body: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = _now()
    published_at: Mapped[datetime | None] = _ts()
    # a row the server refuses for good (too large, bad subject) is set aside with its reason
    # instead of blocking the rows behind it (0005)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime | None] = _ts()

    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        Index(
            "ix_ingress_outbox_unpublished",
            "created_at",
            postgresql_where=text("published_at IS NULL AND failed_at IS NULL"),
        ),
        Index("ix_ingress_outbox_failed", "failed_at", postgresql_where=text("failed_at IS NOT NULL")),
    )
