"""operator tools: attempts trace, dead letters, alert incidents

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 01:50:21.332699
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alert_incidents',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('level', sa.Text(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notified_open', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('notified_resolved', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.CheckConstraint("level IN ('warning', 'critical')", name=op.f('ck_alert_incidents_level')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_incidents'))
    )
    op.create_index('ix_alert_incidents_open_key', 'alert_incidents', ['key'], unique=True, postgresql_where=sa.text('resolved_at IS NULL'))
    op.create_index('ix_alert_incidents_opened_at', 'alert_incidents', ['opened_at'], unique=False)
    op.create_table('dead_letters',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('stream', sa.Text(), nullable=False),
    sa.Column('consumer', sa.Text(), nullable=False),
    sa.Column('stream_seq', sa.BigInteger(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('event_id', sa.UUID(), nullable=True),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.CheckConstraint("kind IN ('max_deliveries', 'terminated')", name=op.f('ck_dead_letters_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters')),
    sa.UniqueConstraint('stream', 'consumer', 'stream_seq', name=op.f('uq_dead_letters_stream_consumer_stream_seq'))
    )
    op.create_index('ix_dead_letters_recorded_at', 'dead_letters', ['recorded_at'], unique=False)
    op.create_table('event_attempts',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('event_id', sa.UUID(), nullable=False),
    sa.Column('consumer', sa.Text(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('stream_seq', sa.BigInteger(), nullable=True),
    sa.Column('num_delivered', sa.Integer(), nullable=True),
    sa.Column('replay_of', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('vendor_calls', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('mappings', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.CheckConstraint("status IN ('done', 'error', 'dead')", name=op.f('ck_event_attempts_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_attempts'))
    )
    op.create_index('ix_event_attempts_event_id_started_at', 'event_attempts', ['event_id', 'started_at'], unique=False)
    op.create_index('ix_event_attempts_finished_at', 'event_attempts', ['finished_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_event_attempts_finished_at', table_name='event_attempts')
    op.drop_index('ix_event_attempts_event_id_started_at', table_name='event_attempts')
    op.drop_table('event_attempts')
    op.drop_index('ix_dead_letters_recorded_at', table_name='dead_letters')
    op.drop_table('dead_letters')
    op.drop_index('ix_alert_incidents_opened_at', table_name='alert_incidents')
    op.drop_index('ix_alert_incidents_open_key', table_name='alert_incidents', postgresql_where=sa.text('resolved_at IS NULL'))
    op.drop_table('alert_incidents')
