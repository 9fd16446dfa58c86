"""SQLAlchemy models for every table of spec/inbound.md §5 and spec/outbound.md §4.

Migrations in ``migrations/versions`` create exactly these; a test runs Alembic's
autogenerate comparison against them and expects no difference.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

EVENT_STATUSES = ("pending", "processing", "done", "error", "dead", "quarantined")
OUTCOMES = ("applied", "skipped", "ignored", "echo")


def _in(column: str, values: tuple[str, ...], nullable: bool = False) -> str:
    listed = ", ".join(f"'{v}'" for v in values)
    clause = f"{column} IN ({listed})"
    return f"{column} IS NULL OR {clause}" if nullable else clause


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING)


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=text("now()"))


def _ts() -> Mapped[datetime | None]:
    return mapped_column(DateTime(timezone=True), nullable=True)


class EventStatusColumns:
    """Status columns shared by the three event tables (spec/inbound.md §4.2, §5.1)."""

    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    outcome: Mapped[str | None] = mapped_column(Text)
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    claimed_at: Mapped[datetime | None] = _ts()
    next_attempt_at: Mapped[datetime | None] = _ts()
    last_error_at: Mapped[datetime | None] = _ts()
    processed_at: Mapped[datetime | None] = _ts()



def _event_status_args(name: str) -> tuple[Any, ...]:
    """Constraints and indexes every event table carries (spec/inbound.md §5.1)."""
    return (
        CheckConstraint(_in("status", EVENT_STATUSES), name="status"),
        CheckConstraint(_in("outcome", OUTCOMES, nullable=True), name="outcome"),
        Index(f"ix_{name}_status", "status"),
        Index(f"ix_{name}_received_at", "received_at"),
        Index(f"ix_{name}_status_received_at", "status", "received_at"),
        Index(
            f"ix_{name}_error_next_attempt",
            "status",
            "next_attempt_at",
            postgresql_where=text("status = 'error'"),
        ),
        Index(
            f"ix_{name}_processing_claimed",
            "status",
            "claimed_at",
            postgresql_where=text("status = 'processing'"),
        ),
    )


class WebhookEvent(EventStatusColumns, Base):
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
    )


class TextingWebhookEvent(EventStatusColumns, Base):
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


class BroadcastWebhookEvent(EventStatusColumns, Base):
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


class QuarantineEvent(Base):
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


class ReconcileRun(Base):
    """One row per sweep or reconcile run (spec/inbound.md §5.5)."""

    __tablename__ = "reconcile_runs"

    id: Mapped[uuid.UUID] = _uuid_pk()
    job_name: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = _ts()
    status: Mapped[str] = mapped_column(Text, nullable=False)
    totals: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error_message: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("status", ("running", "success", "error")), name="status"),
        Index("ix_reconcile_runs_job_name", "job_name"),
        Index("ix_reconcile_runs_started_at", "started_at"),
    )


class SyncState(Base):
    """Reconciliation cursors (spec/inbound.md §5.6)."""

    __tablename__ = "sync_state"

    id: Mapped[uuid.UUID] = _uuid_pk()
    direction: Mapped[str] = mapped_column(Text, nullable=False)
    entity_type: Mapped[str] = mapped_column(Text, nullable=False)
    cursor_updated_at: Mapped[datetime] = _now()
    cursor_id: Mapped[str | None] = mapped_column(Text)
    last_run_at: Mapped[datetime] = _now()
    last_success_at: Mapped[datetime | None] = _ts()

    __table_args__ = (UniqueConstraint("direction", "entity_type"),)


OPTOUT_SOURCES = ("texting", "ghl", "manual", "aloware")
E164_CHECK = r"phone_number ~ '^\+[1-9][0-9]{6,14}$'"


class OptoutRegistry(Base):
    """Current opt-out status per E.164 number (spec/inbound.md §5.7)."""

    __tablename__ = "optout_registry"

    id: Mapped[uuid.UUID] = _uuid_pk()
    phone_number: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    last_event_at: Mapped[datetime] = _now()
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    last_event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))

    __table_args__ = (
        UniqueConstraint("phone_number"),
        CheckConstraint(_in("status", ("opted_out", "opted_in")), name="status"),
        CheckConstraint(_in("source", OPTOUT_SOURCES), name="source"),
        CheckConstraint(E164_CHECK, name="e164"),
        Index("ix_optout_registry_status", "status"),
    )


class OptoutEvent(Base):
    """Append-only opt-out history (spec/inbound.md §5.7)."""

    __tablename__ = "optout_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    phone_number: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint(_in("status", ("opted_out", "opted_in")), name="status"),
        CheckConstraint(_in("source", OPTOUT_SOURCES), name="source"),
        Index("ix_optout_events_phone_at", "phone_number", "at"),
    )


class EventDelivery(Base):
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


class IngressOutbox(Base):
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


class ContactMapping(Base):
    """Aloware ↔ GHL contact ids (spec/outbound.md §4.1)."""

    __tablename__ = "contact_mappings"

    id: Mapped[uuid.UUID] = _uuid_pk()
    aloware_contact_id: Mapped[str | None] = mapped_column(Text)
    ghl_contact_id: Mapped[str] = mapped_column(Text, nullable=False)
    phone_number: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    last_synced_at: Mapped[datetime] = _now()
    sync_direction: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    ghl_conversation_id: Mapped[str | None] = mapped_column(Text)
    ghl_deleted_at: Mapped[datetime | None] = _ts()
    # newest source-event time applied per direction: older events never overwrite it (R2)
    aloware_event_at: Mapped[datetime | None] = _ts()
    ghl_event_at: Mapped[datetime | None] = _ts()
    # the GHL contact's sync-relevant fields as last read or written by us: lets an update
    # diff without re-reading GHL (refreshed whenever aloware-sync reads a human change)
    ghl_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (
        UniqueConstraint("aloware_contact_id", name="contact_mappings_aloware_contact_id_unique"),
        UniqueConstraint("ghl_contact_id", name="contact_mappings_ghl_contact_id_unique"),
        CheckConstraint(
            _in("sync_direction", ("aloware_to_ghl", "ghl_to_aloware", "bidirectional")),
            name="direction",
        ),
        Index("contact_mappings_phone_idx", "phone_number"),
        Index("contact_mappings_email_idx", "email"),
    )


class MessageMapping(Base):
    """Texting ↔ GHL ↔ Verity message ids (spec/outbound.md §4.2)."""

    __tablename__ = "message_mappings"

    id: Mapped[uuid.UUID] = _uuid_pk()
    texting_message_id: Mapped[str | None] = mapped_column(Text)
    ghl_message_id: Mapped[str | None] = mapped_column(Text)
    aloware_message_id: Mapped[str | None] = mapped_column(Text)
    conversation_id: Mapped[str | None] = mapped_column(Text)
    ghl_contact_id: Mapped[str | None] = mapped_column(Text)
    aloware_contact_id: Mapped[str | None] = mapped_column(Text)
    from_number: Mapped[str | None] = mapped_column(Text)
    to_number: Mapped[str | None] = mapped_column(Text)
    direction: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    verity_message_id: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(Text)
    ghl_conversation_id: Mapped[str | None] = mapped_column(Text)
    ghl_sync_status: Mapped[str | None] = mapped_column(Text)
    delivery_status: Mapped[str | None] = mapped_column(Text)
    body_sha256: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint(
            "texting_message_id", name="message_mappings_texting_message_id_unique"
        ),
        UniqueConstraint("ghl_message_id", name="message_mappings_ghl_message_id_unique"),
        UniqueConstraint(
            "aloware_message_id", name="message_mappings_aloware_message_id_unique"
        ),
        UniqueConstraint("verity_message_id", name="message_mappings_verity_message_id_unique"),
        CheckConstraint(_in("direction", ("inbound", "outbound"), nullable=True), name="direction"),
        CheckConstraint(
            _in("ghl_sync_status", ("synced", "failed", "skipped_echo"), nullable=True),
            name="ghl_sync_status",
        ),
        Index("message_mappings_correlation_id_idx", "correlation_id"),
        Index(
            "message_mappings_echo_idx",
            "to_number",
            "body_sha256",
            "created_at",
            postgresql_where=text("texting_message_id IS NULL"),
        ),
        Index("message_mappings_conversation_id_idx", "conversation_id"),
        Index("message_mappings_ghl_contact_id_idx", "ghl_contact_id"),
        Index("message_mappings_aloware_contact_id_idx", "aloware_contact_id"),
        Index("message_mappings_from_number_idx", "from_number"),
        Index("message_mappings_to_number_idx", "to_number"),
    )


class SyncLog(Base):
    """One row per rule execution attempt (spec/outbound.md §0.3, §4.3)."""

    __tablename__ = "sync_log"

    id: Mapped[uuid.UUID] = _uuid_pk()
    direction: Mapped[str] = mapped_column(Text, nullable=False)
    entity_type: Mapped[str] = mapped_column(Text, nullable=False)
    entity_id: Mapped[str] = mapped_column(Text, nullable=False)
    source_id: Mapped[str] = mapped_column(Text, nullable=False)
    target_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = _ts()
    error_message: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(Text)
    rule: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint(_in("status", ("success", "error", "skipped")), name="status"),
        Index("ix_sync_log_entity", "entity_type", "entity_id"),
        Index("ix_sync_log_direction", "direction"),
        Index("ix_sync_log_started_at", "started_at"),
        Index("ix_sync_log_correlation_id", "correlation_id"),
        Index("ix_sync_log_status_started_at", "status", "started_at"),
    )


class AgentDirectory(Base):
    """Agents and how to recognise them (spec/outbound.md §4.4)."""

    __tablename__ = "agent_directory"

    id: Mapped[uuid.UUID] = _uuid_pk()
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    display_name: Mapped[str] = mapped_column(Text, nullable=False)
    ghl_owner_id: Mapped[str | None] = mapped_column(Text)
    ghl_owner_email: Mapped[str | None] = mapped_column(Text)
    ghl_assigned_agent_field_value: Mapped[str | None] = mapped_column(Text)
    required_tag: Mapped[str | None] = mapped_column(Text)
    aloware_user_id: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        UniqueConstraint("agent_key"),
        Index("ix_agent_directory_is_active", "is_active"),
    )


class CallListRegistry(Base):
    """Aloware call lists per agent and list key (spec/outbound.md §4.5)."""

    __tablename__ = "call_list_registry"

    id: Mapped[uuid.UUID] = _uuid_pk()
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    list_key: Mapped[str] = mapped_column(Text, nullable=False)
    aloware_list_id: Mapped[str | None] = mapped_column(Text)
    aloware_list_name: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        UniqueConstraint("agent_key", "list_key"),
        UniqueConstraint("aloware_list_name"),
        Index("ix_call_list_registry_agent_key", "agent_key"),
        Index("ix_call_list_registry_list_key", "list_key"),
    )


class ContactListMembership(Base):
    """Intended list membership of a GHL contact (spec/outbound.md §4.6)."""

    __tablename__ = "contact_list_memberships"

    id: Mapped[uuid.UUID] = _uuid_pk()
    contact_id: Mapped[str] = mapped_column(Text, nullable=False)
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    list_key: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        UniqueConstraint("contact_id", "agent_key", "list_key"),
        CheckConstraint(_in("status", ("active", "removed")), name="status"),
        Index("ix_contact_list_memberships_contact_id", "contact_id"),
        Index("ix_contact_list_memberships_agent_list", "agent_key", "list_key"),
        Index("ix_contact_list_memberships_status", "status"),
    )


class ContactAgentState(Base):
    """Last resolved agent per GHL contact (spec/outbound.md §4.7)."""

    __tablename__ = "contact_agent_state"

    id: Mapped[uuid.UUID] = _uuid_pk()
    contact_id: Mapped[str] = mapped_column(Text, nullable=False)
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    last_aloware_list_status: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        UniqueConstraint("contact_id"),
        Index("ix_contact_agent_state_agent_key", "agent_key"),
    )


class GhlOauthToken(Base):
    """Marketplace OAuth tokens per location, encrypted at rest (spec/outbound.md §4.8)."""

    __tablename__ = "ghl_oauth_tokens"

    id: Mapped[uuid.UUID] = _uuid_pk()
    location_id: Mapped[str] = mapped_column(Text, nullable=False)
    access_token: Mapped[str] = mapped_column(Text, nullable=False)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    token_type: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'Bearer'"))
    scope: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    company_id: Mapped[str | None] = mapped_column(Text)
    user_type: Mapped[str | None] = mapped_column(Text)
    needs_reinstall: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    last_refresh_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("location_id"),
        Index("ix_ghl_oauth_tokens_expires_at", "expires_at"),
    )


class ActivityMapping(Base):
    """One GHL note per source activity (spec/outbound.md §4.9)."""

    __tablename__ = "activity_mappings"

    id: Mapped[uuid.UUID] = _uuid_pk()
    source_system: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    source_id: Mapped[str] = mapped_column(Text, nullable=False)
    ghl_contact_id: Mapped[str | None] = mapped_column(Text)
    ghl_note_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (UniqueConstraint("source_system", "kind", "source_id"),)


class GhlObjectRecordMapping(Base):
    """GHL custom-object record per external id (spec/outbound.md §4.9, B-3)."""

    __tablename__ = "ghl_object_record_mappings"

    id: Mapped[uuid.UUID] = _uuid_pk()
    object_key: Mapped[str] = mapped_column(Text, nullable=False)
    external_id: Mapped[str] = mapped_column(Text, nullable=False)
    ghl_record_id: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (UniqueConstraint("object_key", "external_id"),)


class OutboundWrite(Base):
    """Echo ledger: our own recent writes to vendors (spec/outbound.md LP-1)."""

    __tablename__ = "outbound_writes"

    id: Mapped[uuid.UUID] = _uuid_pk()
    system: Mapped[str] = mapped_column(Text, nullable=False)
    entity_id: Mapped[str] = mapped_column(Text, nullable=False)
    field_hash: Mapped[str] = mapped_column(Text, nullable=False)
    written_at: Mapped[datetime] = _now()

    __table_args__ = (
        Index("ix_outbound_writes_lookup", "system", "entity_id", "written_at"),
    )


EVENT_TABLES: dict[str, type[Base]] = {
    "webhook": WebhookEvent,
    "texting": TextingWebhookEvent,
    "broadcast": BroadcastWebhookEvent,
}


class RateBudgetBucket(Base):
    """Requests sent per vendor budget key and second, shared by every replica (spec 2.1)."""

    __tablename__ = "rate_budget_buckets"

    key: Mapped[str] = mapped_column(Text, nullable=False)
    bucket: Mapped[int] = mapped_column(BigInteger, nullable=False)
    count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))

    __table_args__ = (PrimaryKeyConstraint("key", "bucket"),)


class EventAttempt(Base):
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
    vendor_calls: Mapped[list[Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    mappings: Mapped[list[Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb"))

    __table_args__ = (
        CheckConstraint(_in("status", ("done", "error", "dead")), name="status"),
        Index("ix_event_attempts_event_id_started_at", "event_id", "started_at"),
        Index("ix_event_attempts_finished_at", "finished_at"),
    )


class DeadLetter(Base):
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


class AlertIncident(Base):
    """An alert condition while it holds: notified once when opened, once when resolved."""

    __tablename__ = "alert_incidents"

    id: Mapped[uuid.UUID] = _uuid_pk()
    key: Mapped[str] = mapped_column(Text, nullable=False)
    level: Mapped[str] = mapped_column(Text, nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    value: Mapped[float | None] = mapped_column(Double)
    opened_at: Mapped[datetime] = _now()
    last_seen_at: Mapped[datetime] = _now()
    resolved_at: Mapped[datetime | None] = _ts()
    notified_open: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    notified_resolved: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false"))

    __table_args__ = (
        CheckConstraint(_in("level", ("warning", "critical")), name="level"),
        Index("ix_alert_incidents_open_key", "key", unique=True,
              postgresql_where=text("resolved_at IS NULL")),
        Index("ix_alert_incidents_opened_at", "opened_at"),
    )


class EffectClaim(Base):
    """One irreversible vendor write (an SMS, a note, a conversation message, a contact),
    keyed by ids of the source event: only the attempt that inserted (or, after expiry,
    took over) the claim performs the write (``services/common/sync/effects.py``)."""

    __tablename__ = "effect_claims"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    effect: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False)
    token: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    vendor_id: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    settled_at: Mapped[datetime | None] = _ts()

    __table_args__ = (
        CheckConstraint(_in("state", ("claimed", "done", "unknown")), name="state"),
        Index("ix_effect_claims_unknown", "claimed_at", postgresql_where=text("state = 'unknown'")),
    )
