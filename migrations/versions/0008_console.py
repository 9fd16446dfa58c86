"""operator console: console_audit and console_sessions

The console (services/console) writes every sign-in, failed sign-in, sign-out, payload reveal
and operator action to ``console_audit`` (who, what, when, the target, details, the client
address); its sign-in throttle counts the failed sign-ins there, so a refusal holds across
restarts and replicas. ``console_sessions`` makes a session revocable: the cookie holds a
random token whose SHA-256 is the row's id, and sign-out or the idle timeout ends the row.
``ix_webhook_events_entity_id`` serves the console's search on ids (bench/console/run.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_audit",
        sa.Column("id", postgresql.UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("operator", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("client", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_audit")),
    )
    op.create_index("ix_console_audit_at", "console_audit", ["at"])
    op.create_index("ix_console_audit_action_at", "console_audit", ["action", "at"])
    op.create_index("ix_console_audit_target", "console_audit", ["target"])
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("operator", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
    )
    op.create_index("ix_console_sessions_last_seen_at", "console_sessions", ["last_seen_at"])
    # the console's search on ids (operations.EventFilter.search): entity_id = <pasted id> OR ...;
    # the (entity_type, entity_id) index does not lead with it, so 1,000,000 events took ~0.3 s.
    # Built concurrently: the recorder keeps writing webhook_events meanwhile
    with op.get_context().autocommit_block():
        op.create_index("ix_webhook_events_entity_id", "webhook_events", ["entity_id"], postgresql_concurrently=True,
                        if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_webhook_events_entity_id", table_name="webhook_events", postgresql_concurrently=True,
                      if_exists=True)
    op.drop_index("ix_console_sessions_last_seen_at", table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_index("ix_console_audit_target", table_name="console_audit")
    op.drop_index("ix_console_audit_action_at", table_name="console_audit")
    op.drop_index("ix_console_audit_at", table_name="console_audit")
    op.drop_table("console_audit")
