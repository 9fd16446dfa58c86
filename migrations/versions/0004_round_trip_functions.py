"""round-trip functions: dfm_rate_take() and dfm_event_aggregate()

The shared GHL budget took four round trips per vendor call (BEGIN, advisory lock, take,
COMMIT), and a delivery's event status three (lock the event row, read its deliveries,
update it) twice per delivery. The same steps inside PL/pgSQL functions run as one statement
each. Each statement in a (volatile) function reads with a fresh snapshot, so the budget's
sum is read after its advisory lock is held and the deliveries after the event row is
locked — the orderings the Python code relied on are kept.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 05:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TAKE = """
CREATE FUNCTION dfm_rate_take(p_key text, p_now bigint, p_window bigint, p_limit bigint, p_purge boolean)
RETURNS TABLE (granted boolean, oldest bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    used bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('rate:' || p_key));
    SELECT coalesce(sum(b.count), 0), min(b.bucket) INTO used, oldest
    FROM rate_budget_buckets b WHERE b.key = p_key AND b.bucket >= p_now - p_window;
    granted := used < p_limit;
    IF granted THEN
        INSERT INTO rate_budget_buckets AS b (key, bucket, count) VALUES (p_key, p_now, 1)
        ON CONFLICT (key, bucket) DO UPDATE SET count = b.count + 1;
    END IF;
    IF p_purge THEN
        DELETE FROM rate_budget_buckets b WHERE b.key = p_key AND b.bucket <= p_now - 60;
    END IF;
    RETURN NEXT;
END
$$
"""


AGGREGATE = """
CREATE FUNCTION dfm_event_aggregate(p_table text, p_event uuid, p_expected text[], p_error text,
                                    p_next timestamptz)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    current_status text;
    statuses text[];
    agg text;
    max_attempts integer;
    best text;
    reason text;
BEGIN
    IF p_table NOT IN ('webhook_events', 'texting_webhook_events', 'broadcast_webhook_events') THEN
        RAISE EXCEPTION 'not an event table: %', p_table;
    END IF;
    EXECUTE format('SELECT status FROM %I WHERE id = $1 FOR UPDATE', p_table) INTO current_status USING p_event;
    IF current_status IS NULL OR current_status = 'quarantined' THEN
        RETURN current_status;
    END IF;
    -- read after the lock is held (a new snapshot): every delivery committed before it counts
    WITH d AS (
        SELECT consumer, status, outcome, outcome_reason, attempts
        FROM event_deliveries WHERE event_id = p_event
    ), top AS (
        SELECT p.o FROM unnest(ARRAY['applied', 'echo', 'skipped', 'ignored']) WITH ORDINALITY AS p(o, i)
        WHERE EXISTS (SELECT 1 FROM d WHERE d.outcome = p.o) ORDER BY p.i LIMIT 1
    )
    SELECT CASE WHEN coalesce(array_length(p_expected, 1), 0) > 0
                THEN (SELECT array_agg(coalesce(d.status, 'pending'))
                      FROM unnest(p_expected) AS c(consumer) LEFT JOIN d ON d.consumer = c.consumer)
                ELSE (SELECT array_agg(d.status) FROM d) END,
           (SELECT coalesce(max(d.attempts), 0) FROM d),
           (SELECT top.o FROM top),
           (SELECT d.outcome_reason FROM d, top WHERE d.outcome = top.o AND d.outcome_reason IS NOT NULL
            ORDER BY (left(d.outcome_reason, 9) = 'Unhandled' OR right(d.outcome_reason, 9) = '_disabled')
            LIMIT 1)
    INTO statuses, max_attempts, best, reason;
    agg := CASE WHEN statuses IS NULL THEN 'pending'
                WHEN 'dead' = ANY(statuses) THEN 'dead'
                WHEN 'error' = ANY(statuses) THEN 'error'
                WHEN 'processing' = ANY(statuses) THEN 'processing'
                WHEN 'pending' = ANY(statuses) THEN 'pending'
                ELSE 'done' END;
    IF agg = 'done' THEN
        EXECUTE format('UPDATE %I SET status = $2, attempts = $3, outcome = $4, outcome_reason = $5, '
                       'processed_at = now(), error_message = NULL, next_attempt_at = NULL WHERE id = $1', p_table)
            USING p_event, agg, max_attempts, best, reason;
    ELSIF agg = 'processing' THEN
        EXECUTE format('UPDATE %I SET status = $2, attempts = $3, claimed_at = now() WHERE id = $1', p_table)
            USING p_event, agg, max_attempts;
    ELSIF agg IN ('error', 'dead') AND coalesce(p_error, '') <> '' THEN
        EXECUTE format('UPDATE %I SET status = $2, attempts = $3, error_message = left($4, 2000), '
                       'last_error_at = now(), next_attempt_at = $5 WHERE id = $1', p_table)
            USING p_event, agg, max_attempts, p_error, p_next;
    ELSE
        EXECUTE format('UPDATE %I SET status = $2, attempts = $3 WHERE id = $1', p_table)
            USING p_event, agg, max_attempts;
    END IF;
    RETURN agg;
END
$$
"""


def upgrade() -> None:
    op.execute(TAKE)
    op.execute(AGGREGATE)


def downgrade() -> None:
    op.execute("DROP FUNCTION dfm_event_aggregate(text, uuid, text[], text, timestamptz)")
    op.execute("DROP FUNCTION dfm_rate_take(text, bigint, bigint, bigint, boolean)")
