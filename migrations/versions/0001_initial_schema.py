"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26 23:16:14.455297
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('activity_mappings',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('source_system', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('source_id', sa.Text(), nullable=False),
    sa.Column('ghl_contact_id', sa.Text(), nullable=True),
    sa.Column('ghl_note_id', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activity_mappings')),
    sa.UniqueConstraint('source_system', 'kind', 'source_id', name=op.f('uq_activity_mappings_source_system_kind_source_id'))
    )
    op.create_table('agent_directory',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('agent_key', sa.Text(), nullable=False),
    sa.Column('display_name', sa.Text(), nullable=False),
    sa.Column('ghl_owner_id', sa.Text(), nullable=True),
    sa.Column('ghl_owner_email', sa.Text(), nullable=True),
    sa.Column('ghl_assigned_agent_field_value', sa.Text(), nullable=True),
    sa.Column('required_tag', sa.Text(), nullable=True),
    sa.Column('aloware_user_id', sa.Text(), nullable=True),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agent_directory')),
    sa.UniqueConstraint('agent_key', name=op.f('uq_agent_directory_agent_key'))
    )
    op.create_index('ix_agent_directory_is_active', 'agent_directory', ['is_active'], unique=False)
    op.create_table('broadcast_webhook_events',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('broadcast_id', sa.Text(), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('payload_json', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('dedupe_key', sa.Text(), nullable=False),
    sa.Column('stream_seq', sa.Integer(), nullable=True),
    sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('outcome_reason', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('applied', 'skipped', 'ignored', 'echo')", name=op.f('ck_broadcast_webhook_events_outcome')),
    sa.CheckConstraint("status IN ('pending', 'processing', 'done', 'error', 'dead', 'quarantined')", name=op.f('ck_broadcast_webhook_events_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broadcast_webhook_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_broadcast_webhook_events_dedupe_key'))
    )
    op.create_index('ix_broadcast_webhook_events_broadcast_id', 'broadcast_webhook_events', ['broadcast_id'], unique=False)
    op.create_index('ix_broadcast_webhook_events_error_next_attempt', 'broadcast_webhook_events', ['status', 'next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'error'"))
    op.create_index('ix_broadcast_webhook_events_processing_claimed', 'broadcast_webhook_events', ['status', 'claimed_at'], unique=False, postgresql_where=sa.text("status = 'processing'"))
    op.create_index('ix_broadcast_webhook_events_received_at', 'broadcast_webhook_events', ['received_at'], unique=False)
    op.create_index('ix_broadcast_webhook_events_status', 'broadcast_webhook_events', ['status'], unique=False)
    op.create_index('ix_broadcast_webhook_events_status_received_at', 'broadcast_webhook_events', ['status', 'received_at'], unique=False)
    op.create_table('call_list_registry',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('agent_key', sa.Text(), nullable=False),
    sa.Column('list_key', sa.Text(), nullable=False),
    sa.Column('aloware_list_id', sa.Text(), nullable=True),
    sa.Column('aloware_list_name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_call_list_registry')),
    sa.UniqueConstraint('agent_key', 'list_key', name=op.f('uq_call_list_registry_agent_key_list_key')),
    sa.UniqueConstraint('aloware_list_name', name=op.f('uq_call_list_registry_aloware_list_name'))
    )
    op.create_index('ix_call_list_registry_agent_key', 'call_list_registry', ['agent_key'], unique=False)
    op.create_index('ix_call_list_registry_list_key', 'call_list_registry', ['list_key'], unique=False)
    op.create_table('contact_agent_state',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('contact_id', sa.Text(), nullable=False),
    sa.Column('agent_key', sa.Text(), nullable=False),
    sa.Column('last_aloware_list_status', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_agent_state')),
    sa.UniqueConstraint('contact_id', name=op.f('uq_contact_agent_state_contact_id'))
    )
    op.create_index('ix_contact_agent_state_agent_key', 'contact_agent_state', ['agent_key'], unique=False)
    op.create_table('contact_list_memberships',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('contact_id', sa.Text(), nullable=False),
    sa.Column('agent_key', sa.Text(), nullable=False),
    sa.Column('list_key', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('active', 'removed')", name=op.f('ck_contact_list_memberships_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_list_memberships')),
    sa.UniqueConstraint('contact_id', 'agent_key', 'list_key', name=op.f('uq_contact_list_memberships_contact_id_agent_key_list_key'))
    )
    op.create_index('ix_contact_list_memberships_agent_list', 'contact_list_memberships', ['agent_key', 'list_key'], unique=False)
    op.create_index('ix_contact_list_memberships_contact_id', 'contact_list_memberships', ['contact_id'], unique=False)
    op.create_index('ix_contact_list_memberships_status', 'contact_list_memberships', ['status'], unique=False)
    op.create_table('contact_mappings',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('aloware_contact_id', sa.Text(), nullable=True),
    sa.Column('ghl_contact_id', sa.Text(), nullable=False),
    sa.Column('phone_number', sa.Text(), nullable=True),
    sa.Column('email', sa.Text(), nullable=True),
    sa.Column('last_synced_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sync_direction', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('ghl_conversation_id', sa.Text(), nullable=True),
    sa.Column('ghl_deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("sync_direction IN ('aloware_to_ghl', 'ghl_to_aloware', 'bidirectional')", name=op.f('ck_contact_mappings_direction')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_mappings')),
    sa.UniqueConstraint('aloware_contact_id', name='contact_mappings_aloware_contact_id_unique'),
    sa.UniqueConstraint('ghl_contact_id', name='contact_mappings_ghl_contact_id_unique')
    )
    op.create_index('contact_mappings_email_idx', 'contact_mappings', ['email'], unique=False)
    op.create_index('contact_mappings_phone_idx', 'contact_mappings', ['phone_number'], unique=False)
    op.create_table('event_deliveries',
    sa.Column('event_id', sa.UUID(), nullable=False),
    sa.Column('consumer', sa.Text(), nullable=False),
    sa.Column('event_table', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('outcome_reason', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("event_table IN ('webhook', 'texting', 'broadcast')", name=op.f('ck_event_deliveries_table')),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('applied', 'skipped', 'ignored', 'echo')", name=op.f('ck_event_deliveries_outcome')),
    sa.CheckConstraint("status IN ('pending', 'processing', 'done', 'error', 'dead', 'quarantined')", name=op.f('ck_event_deliveries_status')),
    sa.PrimaryKeyConstraint('event_id', 'consumer', name=op.f('pk_event_deliveries'))
    )
    op.create_index('ix_event_deliveries_consumer_status_next', 'event_deliveries', ['consumer', 'status', 'next_attempt_at'], unique=False)
    op.create_table('ghl_oauth_tokens',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('location_id', sa.Text(), nullable=False),
    sa.Column('access_token', sa.Text(), nullable=False),
    sa.Column('refresh_token', sa.Text(), nullable=True),
    sa.Column('token_type', sa.Text(), server_default=sa.text("'Bearer'"), nullable=False),
    sa.Column('scope', sa.Text(), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('company_id', sa.Text(), nullable=True),
    sa.Column('user_type', sa.Text(), nullable=True),
    sa.Column('needs_reinstall', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('last_refresh_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ghl_oauth_tokens')),
    sa.UniqueConstraint('location_id', name=op.f('uq_ghl_oauth_tokens_location_id'))
    )
    op.create_index('ix_ghl_oauth_tokens_expires_at', 'ghl_oauth_tokens', ['expires_at'], unique=False)
    op.create_table('ghl_object_record_mappings',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('object_key', sa.Text(), nullable=False),
    sa.Column('external_id', sa.Text(), nullable=False),
    sa.Column('ghl_record_id', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ghl_object_record_mappings')),
    sa.UniqueConstraint('object_key', 'external_id', name=op.f('uq_ghl_object_record_mappings_object_key_external_id'))
    )
    op.create_table('ingress_outbox',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('dedupe_key', sa.Text(), nullable=False),
    sa.Column('headers', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingress_outbox')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_ingress_outbox_dedupe_key'))
    )
    op.create_index('ix_ingress_outbox_unpublished', 'ingress_outbox', ['created_at'], unique=False, postgresql_where=sa.text('published_at IS NULL'))
    op.create_table('message_mappings',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('texting_message_id', sa.Text(), nullable=True),
    sa.Column('ghl_message_id', sa.Text(), nullable=True),
    sa.Column('aloware_message_id', sa.Text(), nullable=True),
    sa.Column('conversation_id', sa.Text(), nullable=True),
    sa.Column('ghl_contact_id', sa.Text(), nullable=True),
    sa.Column('aloware_contact_id', sa.Text(), nullable=True),
    sa.Column('from_number', sa.Text(), nullable=True),
    sa.Column('to_number', sa.Text(), nullable=True),
    sa.Column('direction', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('verity_message_id', sa.Text(), nullable=True),
    sa.Column('correlation_id', sa.Text(), nullable=True),
    sa.Column('ghl_conversation_id', sa.Text(), nullable=True),
    sa.Column('ghl_sync_status', sa.Text(), nullable=True),
    sa.Column('delivery_status', sa.Text(), nullable=True),
    sa.Column('body_sha256', sa.Text(), nullable=True),
    sa.CheckConstraint("direction IS NULL OR direction IN ('inbound', 'outbound')", name=op.f('ck_message_mappings_direction')),
    sa.CheckConstraint("ghl_sync_status IS NULL OR ghl_sync_status IN ('synced', 'failed', 'skipped_echo')", name=op.f('ck_message_mappings_ghl_sync_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_message_mappings')),
    sa.UniqueConstraint('aloware_message_id', name='message_mappings_aloware_message_id_unique'),
    sa.UniqueConstraint('ghl_message_id', name='message_mappings_ghl_message_id_unique'),
    sa.UniqueConstraint('texting_message_id', name='message_mappings_texting_message_id_unique'),
    sa.UniqueConstraint('verity_message_id', name='message_mappings_verity_message_id_unique')
    )
    op.create_index('message_mappings_aloware_contact_id_idx', 'message_mappings', ['aloware_contact_id'], unique=False)
    op.create_index('message_mappings_conversation_id_idx', 'message_mappings', ['conversation_id'], unique=False)
    op.create_index('message_mappings_correlation_id_idx', 'message_mappings', ['correlation_id'], unique=False)
    op.create_index('message_mappings_echo_idx', 'message_mappings', ['to_number', 'body_sha256', 'created_at'], unique=False, postgresql_where=sa.text('texting_message_id IS NULL'))
    op.create_index('message_mappings_from_number_idx', 'message_mappings', ['from_number'], unique=False)
    op.create_index('message_mappings_ghl_contact_id_idx', 'message_mappings', ['ghl_contact_id'], unique=False)
    op.create_index('message_mappings_to_number_idx', 'message_mappings', ['to_number'], unique=False)
    op.create_table('optout_events',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('phone_number', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('event_id', sa.UUID(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("source IN ('texting', 'ghl', 'manual', 'aloware')", name=op.f('ck_optout_events_source')),
    sa.CheckConstraint("status IN ('opted_out', 'opted_in')", name=op.f('ck_optout_events_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_optout_events'))
    )
    op.create_index('ix_optout_events_phone_at', 'optout_events', ['phone_number', 'at'], unique=False)
    op.create_table('optout_registry',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('phone_number', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('last_event_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_event_id', sa.UUID(), nullable=True),
    sa.CheckConstraint("phone_number ~ '^\\+[1-9][0-9]{6,14}$'", name=op.f('ck_optout_registry_e164')),
    sa.CheckConstraint("source IN ('texting', 'ghl', 'manual', 'aloware')", name=op.f('ck_optout_registry_source')),
    sa.CheckConstraint("status IN ('opted_out', 'opted_in')", name=op.f('ck_optout_registry_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_optout_registry')),
    sa.UniqueConstraint('phone_number', name=op.f('uq_optout_registry_phone_number'))
    )
    op.create_index('ix_optout_registry_status', 'optout_registry', ['status'], unique=False)
    op.create_table('outbound_writes',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('system', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=False),
    sa.Column('field_hash', sa.Text(), nullable=False),
    sa.Column('written_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound_writes'))
    )
    op.create_index('ix_outbound_writes_lookup', 'outbound_writes', ['system', 'entity_id', 'written_at'], unique=False)
    op.create_table('quarantine_events',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('event_id', sa.UUID(), nullable=False),
    sa.Column('event_source', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('quarantined_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('quarantined_by', sa.Text(), nullable=True),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('released_by', sa.Text(), nullable=True),
    sa.CheckConstraint("event_source IN ('webhook', 'texting', 'broadcast')", name=op.f('ck_quarantine_events_source')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantine_events'))
    )
    op.create_index('ix_quarantine_events_event_id', 'quarantine_events', ['event_id'], unique=False)
    op.create_index('ix_quarantine_events_event_source', 'quarantine_events', ['event_source'], unique=False)
    op.create_index('uq_quarantine_events_active', 'quarantine_events', ['event_id', 'event_source'], unique=True, postgresql_where=sa.text('released_at IS NULL'))
    op.create_table('reconcile_runs',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('job_name', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('totals', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'success', 'error')", name=op.f('ck_reconcile_runs_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconcile_runs'))
    )
    op.create_index('ix_reconcile_runs_job_name', 'reconcile_runs', ['job_name'], unique=False)
    op.create_index('ix_reconcile_runs_started_at', 'reconcile_runs', ['started_at'], unique=False)
    op.create_table('sync_log',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('direction', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=False),
    sa.Column('source_id', sa.Text(), nullable=False),
    sa.Column('target_id', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('correlation_id', sa.Text(), nullable=True),
    sa.Column('rule', sa.Text(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.CheckConstraint("status IN ('success', 'error', 'skipped')", name=op.f('ck_sync_log_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_log'))
    )
    op.create_index('ix_sync_log_correlation_id', 'sync_log', ['correlation_id'], unique=False)
    op.create_index('ix_sync_log_direction', 'sync_log', ['direction'], unique=False)
    op.create_index('ix_sync_log_entity', 'sync_log', ['entity_type', 'entity_id'], unique=False)
    op.create_index('ix_sync_log_started_at', 'sync_log', ['started_at'], unique=False)
    op.create_index('ix_sync_log_status_started_at', 'sync_log', ['status', 'started_at'], unique=False)
    op.create_table('sync_state',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('direction', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('cursor_updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('cursor_id', sa.Text(), nullable=True),
    sa.Column('last_run_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_state')),
    sa.UniqueConstraint('direction', 'entity_type', name=op.f('uq_sync_state_direction_entity_type'))
    )
    op.create_table('texting_webhook_events',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('canonical_type', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), server_default=sa.text("'message'"), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=True),
    sa.Column('conversation_id', sa.Text(), nullable=True),
    sa.Column('from_number', sa.Text(), nullable=True),
    sa.Column('to_number', sa.Text(), nullable=True),
    sa.Column('payload_json', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('dedupe_key', sa.Text(), nullable=False),
    sa.Column('stream_seq', sa.Integer(), nullable=True),
    sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('outcome_reason', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('applied', 'skipped', 'ignored', 'echo')", name=op.f('ck_texting_webhook_events_outcome')),
    sa.CheckConstraint("status IN ('pending', 'processing', 'done', 'error', 'dead', 'quarantined')", name=op.f('ck_texting_webhook_events_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_texting_webhook_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_texting_webhook_events_dedupe_key'))
    )
    op.create_index('ix_texting_webhook_events_conversation_id', 'texting_webhook_events', ['conversation_id'], unique=False)
    op.create_index('ix_texting_webhook_events_entity_id', 'texting_webhook_events', ['entity_id'], unique=False)
    op.create_index('ix_texting_webhook_events_error_next_attempt', 'texting_webhook_events', ['status', 'next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'error'"))
    op.create_index('ix_texting_webhook_events_from_number', 'texting_webhook_events', ['from_number'], unique=False)
    op.create_index('ix_texting_webhook_events_processing_claimed', 'texting_webhook_events', ['status', 'claimed_at'], unique=False, postgresql_where=sa.text("status = 'processing'"))
    op.create_index('ix_texting_webhook_events_received_at', 'texting_webhook_events', ['received_at'], unique=False)
    op.create_index('ix_texting_webhook_events_status', 'texting_webhook_events', ['status'], unique=False)
    op.create_index('ix_texting_webhook_events_status_received_at', 'texting_webhook_events', ['status', 'received_at'], unique=False)
    op.create_index('ix_texting_webhook_events_to_number', 'texting_webhook_events', ['to_number'], unique=False)
    op.create_table('webhook_events',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('event_token', sa.Text(), nullable=False),
    sa.Column('canonical_type', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=False),
    sa.Column('location_id', sa.Text(), nullable=True),
    sa.Column('payload_json', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('payload_raw', sa.LargeBinary(), nullable=True),
    sa.Column('dedupe_key', sa.Text(), nullable=False),
    sa.Column('stream_seq', sa.Integer(), nullable=True),
    sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('outcome_reason', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('applied', 'skipped', 'ignored', 'echo')", name=op.f('ck_webhook_events_outcome')),
    sa.CheckConstraint("source IN ('ghl', 'ghl_provider', 'aloware')", name=op.f('ck_webhook_events_source')),
    sa.CheckConstraint("status IN ('pending', 'processing', 'done', 'error', 'dead', 'quarantined')", name=op.f('ck_webhook_events_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_webhook_events_dedupe_key'))
    )
    op.create_index('ix_webhook_events_entity', 'webhook_events', ['entity_type', 'entity_id'], unique=False)
    op.create_index('ix_webhook_events_entity_order', 'webhook_events', ['source', 'entity_type', 'entity_id', 'received_at'], unique=False)
    op.create_index('ix_webhook_events_error_next_attempt', 'webhook_events', ['status', 'next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'error'"))
    op.create_index('ix_webhook_events_processing_claimed', 'webhook_events', ['status', 'claimed_at'], unique=False, postgresql_where=sa.text("status = 'processing'"))
    op.create_index('ix_webhook_events_received_at', 'webhook_events', ['received_at'], unique=False)
    op.create_index('ix_webhook_events_source_status', 'webhook_events', ['source', 'status'], unique=False)
    op.create_index('ix_webhook_events_status', 'webhook_events', ['status'], unique=False)
    op.create_index('ix_webhook_events_status_received_at', 'webhook_events', ['status', 'received_at'], unique=False)



def downgrade() -> None:

    op.drop_index('ix_webhook_events_status_received_at', table_name='webhook_events')
    op.drop_index('ix_webhook_events_status', table_name='webhook_events')
    op.drop_index('ix_webhook_events_source_status', table_name='webhook_events')
    op.drop_index('ix_webhook_events_received_at', table_name='webhook_events')
    op.drop_index('ix_webhook_events_processing_claimed', table_name='webhook_events', postgresql_where=sa.text("status = 'processing'"))
    op.drop_index('ix_webhook_events_error_next_attempt', table_name='webhook_events', postgresql_where=sa.text("status = 'error'"))
    op.drop_index('ix_webhook_events_entity_order', table_name='webhook_events')
    op.drop_index('ix_webhook_events_entity', table_name='webhook_events')
    op.drop_table('webhook_events')
    op.drop_index('ix_texting_webhook_events_to_number', table_name='texting_webhook_events')
    op.drop_index('ix_texting_webhook_events_status_received_at', table_name='texting_webhook_events')
    op.drop_index('ix_texting_webhook_events_status', table_name='texting_webhook_events')
    op.drop_index('ix_texting_webhook_events_received_at', table_name='texting_webhook_events')
    op.drop_index('ix_texting_webhook_events_processing_claimed', table_name='texting_webhook_events', postgresql_where=sa.text("status = 'processing'"))
    op.drop_index('ix_texting_webhook_events_from_number', table_name='texting_webhook_events')
    op.drop_index('ix_texting_webhook_events_error_next_attempt', table_name='texting_webhook_events', postgresql_where=sa.text("status = 'error'"))
    op.drop_index('ix_texting_webhook_events_entity_id', table_name='texting_webhook_events')
    op.drop_index('ix_texting_webhook_events_conversation_id', table_name='texting_webhook_events')
    op.drop_table('texting_webhook_events')
    op.drop_table('sync_state')
    op.drop_index('ix_sync_log_status_started_at', table_name='sync_log')
    op.drop_index('ix_sync_log_started_at', table_name='sync_log')
    op.drop_index('ix_sync_log_entity', table_name='sync_log')
    op.drop_index('ix_sync_log_direction', table_name='sync_log')
    op.drop_index('ix_sync_log_correlation_id', table_name='sync_log')
    op.drop_table('sync_log')
    op.drop_index('ix_reconcile_runs_started_at', table_name='reconcile_runs')
    op.drop_index('ix_reconcile_runs_job_name', table_name='reconcile_runs')
    op.drop_table('reconcile_runs')
    op.drop_index('uq_quarantine_events_active', table_name='quarantine_events', postgresql_where=sa.text('released_at IS NULL'))
    op.drop_index('ix_quarantine_events_event_source', table_name='quarantine_events')
    op.drop_index('ix_quarantine_events_event_id', table_name='quarantine_events')
    op.drop_table('quarantine_events')
    op.drop_index('ix_outbound_writes_lookup', table_name='outbound_writes')
    op.drop_table('outbound_writes')
    op.drop_index('ix_optout_registry_status', table_name='optout_registry')
    op.drop_table('optout_registry')
    op.drop_index('ix_optout_events_phone_at', table_name='optout_events')
    op.drop_table('optout_events')
    op.drop_index('message_mappings_to_number_idx', table_name='message_mappings')
    op.drop_index('message_mappings_ghl_contact_id_idx', table_name='message_mappings')
    op.drop_index('message_mappings_from_number_idx', table_name='message_mappings')
    op.drop_index('message_mappings_echo_idx', table_name='message_mappings', postgresql_where=sa.text('texting_message_id IS NULL'))
    op.drop_index('message_mappings_correlation_id_idx', table_name='message_mappings')
    op.drop_index('message_mappings_conversation_id_idx', table_name='message_mappings')
    op.drop_index('message_mappings_aloware_contact_id_idx', table_name='message_mappings')
    op.drop_table('message_mappings')
    op.drop_index('ix_ingress_outbox_unpublished', table_name='ingress_outbox', postgresql_where=sa.text('published_at IS NULL'))
    op.drop_table('ingress_outbox')
    op.drop_table('ghl_object_record_mappings')
    op.drop_index('ix_ghl_oauth_tokens_expires_at', table_name='ghl_oauth_tokens')
    op.drop_table('ghl_oauth_tokens')
    op.drop_index('ix_event_deliveries_consumer_status_next', table_name='event_deliveries')
    op.drop_table('event_deliveries')
    op.drop_index('contact_mappings_phone_idx', table_name='contact_mappings')
    op.drop_index('contact_mappings_email_idx', table_name='contact_mappings')
    op.drop_table('contact_mappings')
    op.drop_index('ix_contact_list_memberships_status', table_name='contact_list_memberships')
    op.drop_index('ix_contact_list_memberships_contact_id', table_name='contact_list_memberships')
    op.drop_index('ix_contact_list_memberships_agent_list', table_name='contact_list_memberships')
    op.drop_table('contact_list_memberships')
    op.drop_index('ix_contact_agent_state_agent_key', table_name='contact_agent_state')
    op.drop_table('contact_agent_state')
    op.drop_index('ix_call_list_registry_list_key', table_name='call_list_registry')
    op.drop_index('ix_call_list_registry_agent_key', table_name='call_list_registry')
    op.drop_table('call_list_registry')
    op.drop_index('ix_broadcast_webhook_events_status_received_at', table_name='broadcast_webhook_events')
    op.drop_index('ix_broadcast_webhook_events_status', table_name='broadcast_webhook_events')
    op.drop_index('ix_broadcast_webhook_events_received_at', table_name='broadcast_webhook_events')
    op.drop_index('ix_broadcast_webhook_events_processing_claimed', table_name='broadcast_webhook_events', postgresql_where=sa.text("status = 'processing'"))
    op.drop_index('ix_broadcast_webhook_events_error_next_attempt', table_name='broadcast_webhook_events', postgresql_where=sa.text("status = 'error'"))
    op.drop_index('ix_broadcast_webhook_events_broadcast_id', table_name='broadcast_webhook_events')
    op.drop_table('broadcast_webhook_events')
    op.drop_index('ix_agent_directory_is_active', table_name='agent_directory')
    op.drop_table('agent_directory')
    op.drop_table('activity_mappings')

