"""delivery round trips: dfm_delivery_claim() and dfm_event_aggregate_as()

Every delivery of every consumer paid for its bookkeeping in round trips: ``begin`` was
BEGIN, the event row, the claim, the event's aggregate, COMMIT (five); ``finish`` was BEGIN,
the end state (with its attempt and sync_log rows), the aggregate, COMMIT (four). On the
2-core bench machine a round trip through SQLAlchemy costs 0.4–1.1 ms of the consumer's CPU
(bench/RESULTS.md, issue #18), so these nine were a large share of the per-event cost.

``dfm_delivery_claim`` claims the consumer's delivery and, when it did, sets the event's
aggregate, in one statement (a PL/pgSQL function's statements each read with a fresh
snapshot, so the aggregate sees the claim just made, as the two statements of one
transaction did). Not claimed, it says why: the delivery's status and how long its live
claim still runs. With the event row's insert before it, ``begin`` is two autocommit
statements.

``dfm_event_aggregate_as`` is the aggregate with one delivery's new values given: ``finish``
writes the end state in a data-modifying CTE and passes the row it returned, so the end
state, its attempt and sync_log rows and the event's status are one statement, atomic on its
own. (Whether the function's own reads see the CTE's row within the same statement is not
something to lean on: it is told that row and ignores the stored one.) ``dfm_event_aggregate``
keeps its signature and now calls it with no override.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 12:50:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AGGREGATE_AS = """
CREATE FUNCTION dfm_event_aggregate_as(p_table text, p_event uuid, p_expected text[], p_error text,
                                       p_next timestamptz, p_consumer text, p_status text,
                                       p_outcome text, p_reason text, p_attempts integer)
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
    -- read after the lock is held (a new snapshot): every delivery committed before it counts;
    -- p_consumer's row as the caller's statement has just written it
    WITH stored AS (
        SELECT consumer, status, outcome, outcome_reason, attempts
        FROM event_deliveries WHERE event_id = p_event
    ), d AS (
        SELECT consumer, status, outcome, outcome_reason, attempts FROM stored
        WHERE p_consumer IS NULL OR consumer <> p_consumer
        UNION ALL
        SELECT p_consumer, p_status, p_outcome, p_reason, p_attempts WHERE p_consumer IS NOT NULL
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

AGGREGATE = """
CREATE OR REPLACE FUNCTION dfm_event_aggregate(p_table text, p_event uuid, p_expected text[], p_error text,
                                               p_next timestamptz)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN dfm_event_aggregate_as(p_table, p_event, p_expected, p_error, p_next, NULL, NULL, NULL, NULL, NULL);
END
$$
"""

CLAIM = """
CREATE FUNCTION dfm_delivery_claim(p_table text, p_event uuid, p_consumer text, p_event_table text,
                                   p_lease_ms bigint, p_expected text[])
RETURNS TABLE (o_attempt integer, o_status text, o_held_ms double precision)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lease interval := p_lease_ms * interval '1 millisecond';
BEGIN
    -- claimed_at on the database clock, written and compared here: replicas' clocks may differ
    INSERT INTO event_deliveries AS d (event_id, consumer, event_table, status, attempts, claimed_at)
    VALUES (p_event, p_consumer, p_event_table, 'processing', 1, now())
    ON CONFLICT (event_id, consumer) DO UPDATE
        SET status = 'processing', attempts = d.attempts + 1, claimed_at = now(), updated_at = now()
        WHERE d.status IN ('pending', 'error')
           OR (d.status = 'processing' AND (d.claimed_at IS NULL OR d.claimed_at < now() - lease))
    RETURNING d.attempts INTO o_attempt;
    IF o_attempt IS NOT NULL THEN
        o_status := 'processing';
        PERFORM dfm_event_aggregate(p_table, p_event, p_expected, NULL, NULL);
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT d.status, extract(epoch FROM d.claimed_at + lease - now()) * 1000
    INTO o_status, o_held_ms
    FROM event_deliveries d WHERE d.event_id = p_event AND d.consumer = p_consumer;
    RETURN NEXT;
END
$$
"""


def upgrade() -> None:
    op.execute(AGGREGATE_AS)
    op.execute(AGGREGATE)
    op.execute(CLAIM)


def downgrade() -> None:
    op.execute("DROP FUNCTION dfm_delivery_claim(text, uuid, text, text, bigint, text[])")
    # the 0004 body, self-contained again, before the function it calls goes
    spec = importlib.util.spec_from_file_location("_dfm_0004", Path(__file__).with_name("0004_round_trip_functions.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    op.execute(module.AGGREGATE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(
        "DROP FUNCTION dfm_event_aggregate_as(text, uuid, text[], text, timestamptz, text, text, text, text, integer)"
    )
