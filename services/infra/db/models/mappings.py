"""Cross-system identity and what we wrote: ID mappings, the echo ledger (outbound writes),
sync_log, sync cursors, effect claims.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from services.infra.db.models.base import Base, _in, _now, _ts, _uuid_pk


class ContactMappingRow(Base):
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


class MessageMappingRow(Base):
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
        UniqueConstraint("texting_message_id", name="message_mappings_texting_message_id_unique"),
        UniqueConstraint("ghl_message_id", name="message_mappings_ghl_message_id_unique"),
        UniqueConstraint("aloware_message_id", name="message_mappings_aloware_message_id_unique"),
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


class ActivityMappingRow(Base):
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


class GhlObjectRecordMappingRow(Base):
    """GHL custom-object record per external id (spec/outbound.md §4.9, B-3)."""

    __tablename__ = "ghl_object_record_mappings"

    id: Mapped[uuid.UUID] = _uuid_pk()
    object_key: Mapped[str] = mapped_column(Text, nullable=False)
    external_id: Mapped[str] = mapped_column(Text, nullable=False)
    ghl_record_id: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (UniqueConstraint("object_key", "external_id"),)


class OutboundWriteRow(Base):
    """Echo ledger: our own recent writes to vendors (spec/outbound.md LP-1)."""

    __tablename__ = "outbound_writes"

    id: Mapped[uuid.UUID] = _uuid_pk()
    system: Mapped[str] = mapped_column(Text, nullable=False)
    entity_id: Mapped[str] = mapped_column(Text, nullable=False)
    field_hash: Mapped[str] = mapped_column(Text, nullable=False)
    written_at: Mapped[datetime] = _now()

    __table_args__ = (Index("ix_outbound_writes_lookup", "system", "entity_id", "written_at"),)


class SyncLogRow(Base):
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


class SyncStateRow(Base):
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


class EffectClaimRow(Base):
    """One irreversible vendor write (an SMS, a note, a conversation message, a contact),
    keyed by ids of the source event: only the attempt that inserted (or, after expiry,
    took over) the claim performs the write (``services/domain/effects.py``)."""

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
