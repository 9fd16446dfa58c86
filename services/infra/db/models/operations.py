"""Operational state: reconcile runs, alert incidents, the shared vendor rate budget and GHL OAuth
tokens.
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
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from services.infra.db.models.base import Base, _in, _now, _ts, _uuid_pk


class ReconcileRunRow(Base):
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


class AlertIncidentRow(Base):
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
    notified_resolved: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))

    __table_args__ = (
        CheckConstraint(_in("level", ("warning", "critical")), name="level"),
        Index("ix_alert_incidents_open_key", "key", unique=True, postgresql_where=text("resolved_at IS NULL")),
        Index("ix_alert_incidents_opened_at", "opened_at"),
    )


class RateBudgetBucketRow(Base):
    """Requests sent per vendor budget key and second, shared by every replica (spec 2.1)."""

    __tablename__ = "rate_budget_buckets"

    key: Mapped[str] = mapped_column(Text, nullable=False)
    bucket: Mapped[int] = mapped_column(BigInteger, nullable=False)
    count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))

    __table_args__ = (PrimaryKeyConstraint("key", "bucket"),)


class RateBudgetRow(Base):
    """One shared vendor budget's learned window, 429 pause and realtime demand, read and
    written by every replica under the budget's advisory lock (migration 0009,
    services/clients/budget.py)."""

    __tablename__ = "rate_budgets"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    learned_max: Mapped[int | None] = mapped_column(Integer)
    learned_interval_ms: Mapped[int | None] = mapped_column(Integer)
    learned_daily_max: Mapped[int | None] = mapped_column(Integer)
    learned_at: Mapped[datetime | None] = _ts()
    paused_until: Mapped[datetime | None] = _ts()
    pauses: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    realtime_wanted_at: Mapped[datetime | None] = _ts()
    realtime_waiting_until: Mapped[datetime | None] = _ts()


class GhlOauthTokenRow(Base):
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
    needs_reinstall: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    last_refresh_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("location_id"),
        Index("ix_ghl_oauth_tokens_expires_at", "expires_at"),
    )


class ConsoleAuditRow(Base):
    """Who did what in the operator console, and when (services/console): every sign-in, failed
    sign-in, sign-out, payload reveal and action. Failed sign-ins are also what the console's
    throttle counts, so the refusal holds across restarts and replicas."""

    __tablename__ = "console_audit"

    id: Mapped[uuid.UUID] = _uuid_pk()
    at: Mapped[datetime] = _now()
    operator: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    target: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    client: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_console_audit_at", "at"),
        Index("ix_console_audit_action_at", "action", "at"),
        Index("ix_console_audit_target", "target"),
    )


class ConsoleSessionRow(Base):
    """A signed-in console session. The cookie carries only a random token whose SHA-256 is
    ``id``: signing out or the idle timeout ends the row, so a copied cookie stops working too
    (a cookie alone cannot be revoked)."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    operator: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()
    last_seen_at: Mapped[datetime] = _now()
    ended_at: Mapped[datetime | None] = _ts()
    client: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_console_sessions_last_seen_at", "last_seen_at"),)
