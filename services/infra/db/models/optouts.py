"""The opt-out registry and its history (spec/outbound.md O-1..O-5)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    Index,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from services.infra.db.models.base import E164_CHECK, Base, _in, _now, _uuid_pk

OPTOUT_SOURCES = ("texting", "ghl", "manual", "aloware")


class OptoutRegistryRow(Base):
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


class OptoutEventRow(Base):
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
