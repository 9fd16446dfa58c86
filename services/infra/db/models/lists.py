"""Agents and the Aloware call lists per agent (spec/outbound.md L-1..L-6)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Index,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.infra.db.models.base import Base, _in, _now, _uuid_pk


class AgentDirectoryRow(Base):
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


class CallListRegistryRow(Base):
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


class ContactListMembershipRow(Base):
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


class ContactAgentStateRow(Base):
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
