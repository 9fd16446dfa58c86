"""edge inputs: 64-bit stream sequences, outbox rows that cannot be published

JetStream stream sequences are unsigned 64-bit; the event tables stored them in int4, so at
2^31 every insert would fail and the pipeline would stop. The outbox gets a per-row failure
record so one row that the server refuses for good (too large, bad subject) is set aside
with its reason instead of blocking every row behind it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TABLES = ("webhook_events", "texting_webhook_events", "broadcast_webhook_events")


def upgrade() -> None:
    for table in EVENT_TABLES:
        op.alter_column(table, "stream_seq", type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=True)
    op.add_column("ingress_outbox", sa.Column("attempts", sa.Integer(), nullable=False,
                                              server_default=sa.text("0")))
    op.add_column("ingress_outbox", sa.Column("last_error", sa.Text(), nullable=True))
    op.add_column("ingress_outbox", sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True))
    # the drain reads only rows still to publish; failed rows leave that index
    op.drop_index("ix_ingress_outbox_unpublished", table_name="ingress_outbox")
    op.create_index("ix_ingress_outbox_unpublished", "ingress_outbox", ["created_at"],
                    postgresql_where=sa.text("published_at IS NULL AND failed_at IS NULL"))
    op.create_index("ix_ingress_outbox_failed", "ingress_outbox", ["failed_at"],
                    postgresql_where=sa.text("failed_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_ingress_outbox_failed", table_name="ingress_outbox")
    op.drop_index("ix_ingress_outbox_unpublished", table_name="ingress_outbox")
    op.create_index("ix_ingress_outbox_unpublished", "ingress_outbox", ["created_at"],
                    postgresql_where=sa.text("published_at IS NULL"))
    op.drop_column("ingress_outbox", "failed_at")
    op.drop_column("ingress_outbox", "last_error")
    op.drop_column("ingress_outbox", "attempts")
    # a sequence past int4 cannot go back; such rows keep NULL rather than failing the downgrade
    for table in EVENT_TABLES:
        op.execute(f"UPDATE {table} SET stream_seq = NULL WHERE stream_seq > 2147483647")
        op.alter_column(table, "stream_seq", type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=True)
