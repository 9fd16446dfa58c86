"""shared vendor rate budget; event watermarks and a GHL snapshot on contact mappings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_budget_buckets",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("key", "bucket", name=op.f("pk_rate_budget_buckets")),
    )
    op.add_column("contact_mappings", sa.Column("aloware_event_at", sa.DateTime(timezone=True)))
    op.add_column("contact_mappings", sa.Column("ghl_event_at", sa.DateTime(timezone=True)))
    op.add_column("contact_mappings", sa.Column("ghl_snapshot", postgresql.JSONB(astext_type=sa.Text())))


def downgrade() -> None:
    op.drop_column("contact_mappings", "ghl_snapshot")
    op.drop_column("contact_mappings", "ghl_event_at")
    op.drop_column("contact_mappings", "aloware_event_at")
    op.drop_table("rate_budget_buckets")
