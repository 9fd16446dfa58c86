"""Declarative base, naming convention and the status columns every event table shares."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
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


def core_table(model: Any) -> Table:
    """A mapped class's Core ``Table``: statements built once on it skip ORM-enabled DML's
    per-call work (services/infra/delivery.py, services/domain/store.py)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()"))


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


E164_CHECK = r"phone_number ~ '^\+[1-9][0-9]{6,14}$'"
