"""effect claims: irreversible vendor writes happen once

An agent's SMS, a GHL note, a conversation message or a new GHL contact cannot be taken back,
so the mappings' "insert, then look" guards were not enough: two deliveries of one event
could both pass them, and a retry after a lost response wrote again. ``effect_claims`` holds
one row per write, keyed by ids of the source event and inserted with ON CONFLICT DO NOTHING
RETURNING, so only the attempt that inserted it performs the write; ``unknown`` rows (the
write may have happened) wait for an operator (partial index for listing them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "effect_claims",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("effect", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("token", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("vendor_id", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('claimed', 'done', 'unknown')", name=op.f("ck_effect_claims_state")),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_effect_claims")),
    )
    op.create_index("ix_effect_claims_unknown", "effect_claims", ["claimed_at"],
                    postgresql_where=sa.text("state = 'unknown'"))
    # writes made before this revision keep their guard: what the mappings say was written is
    # done; a mapping claimed but never completed (the old scheme's "interrupted") is an
    # expired claim, which the next attempt checks at the vendor (notes, messages) or, for
    # an SMS, which Verity cannot be asked about, an unknown one for an operator
    op.execute("""
        INSERT INTO effect_claims (key, effect, state, token, vendor_id, expires_at, settled_at)
        SELECT 'm2:' || ghl_message_id, 'verity.send_message',
               CASE WHEN verity_message_id IS NULL THEN 'unknown' ELSE 'done' END,
               gen_random_uuid(), verity_message_id, now(), now()
        FROM message_mappings
        WHERE ghl_message_id IS NOT NULL AND correlation_id = ghl_message_id
        ON CONFLICT DO NOTHING""")
    op.execute("""
        INSERT INTO effect_claims (key, effect, state, token, vendor_id, expires_at, settled_at)
        SELECT 'm1:' || texting_message_id, 'ghl.conversation_message',
               CASE WHEN ghl_message_id IS NULL THEN 'claimed' ELSE 'done' END,
               gen_random_uuid(), ghl_message_id, now(),
               CASE WHEN ghl_message_id IS NULL THEN NULL ELSE now() END
        FROM message_mappings
        WHERE texting_message_id IS NOT NULL AND (ghl_message_id IS NOT NULL OR ghl_sync_status IS NULL)
        ON CONFLICT DO NOTHING""")
    op.execute("""
        INSERT INTO effect_claims (key, effect, state, token, vendor_id, expires_at, settled_at)
        SELECT 'note:' || source_system || ':' || kind || ':' || source_id, 'ghl.note',
               CASE WHEN ghl_note_id IS NULL THEN 'claimed' ELSE 'done' END,
               gen_random_uuid(), ghl_note_id, now(),
               CASE WHEN ghl_note_id IS NULL THEN NULL ELSE now() END
        FROM activity_mappings
        ON CONFLICT DO NOTHING""")


def downgrade() -> None:
    op.drop_index("ix_effect_claims_unknown", table_name="effect_claims")
    op.drop_table("effect_claims")
