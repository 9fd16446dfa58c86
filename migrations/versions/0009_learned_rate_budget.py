"""learned rate budget: rate_budgets, dfm_rate_acquire(), dfm_rate_observe()

The GHL budget ran at the configured 80 of GHL's 100 requests / 10 s, counted in one-second
buckets over 11 s: about 73 % of what GHL allows. GHL says its window on every answer
(``X-RateLimit-Max``, ``-Remaining``, ``-Interval-Milliseconds``, the daily ones), so the
budget now learns it, and keeps what it learned where every replica reads it: one row per
budget key in ``rate_budgets`` (services/clients/budget.py explains the arithmetic).

``rate_budgets`` holds, per key: the learned window (max, interval, daily max) and when it
was learned; ``paused_until``, set once by the first 429 of an episode, which every replica's
next acquire waits for; ``pauses``, how many episodes there were; and the realtime lane's
demand, ``realtime_wanted_at`` (its last acquire) and ``realtime_waiting_until`` (until when a
refused realtime caller is waiting in-process), which hold the bulk lane back.

Grants are counted in ``rate_budget_buckets`` under the same key as before, one bucket per
millisecond (an exact sliding window; the rows in a window are at most its grants), keyed by
epoch milliseconds (≈1.7e12) where ``dfm_rate_take`` keys by epoch seconds (≈1.7e9). During a
rolling deploy the two releases therefore still count each other: the new function counts an
old second bucket as granted at the end of its second; the old one counts every millisecond
bucket as "recent" (its ``bucket >= now - 10`` holds for all of them), so an old replica sees
more use than there is and sends less, never more. Both take the same advisory lock. The
daily quota is counted as in 0007 (``<key>/quota``, 5-minute buckets in epoch seconds). Time
is the database's clock (``clock_timestamp()``, read after the lock is held), so replicas
whose clocks differ still share one window. A grant holds its slot for the window and a
margin (``p_margin_ms``) for the network's jitter.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 05:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Buckets at or above this are epoch milliseconds (this release), below it epoch seconds
# (dfm_rate_take, dfm_rate_take_with_quota): 1e11 s is the year 5138, 1e11 ms is 1973.
MS_BUCKETS = "100000000000"

# Grants in the window ending now (the last ``win`` ms, ``(now - win, now]``, ``win`` being
# the window and its margin), as (time in ms,
# count): millisecond buckets as they are; a legacy second bucket s as if granted at the end
# of its second, so it leaves the window no earlier than it could.
WINDOW_ROWS = f"""
    SELECT CASE WHEN b.bucket >= {MS_BUCKETS} THEN b.bucket ELSE b.bucket * 1000 + 999 END AS pos, b.count
    FROM rate_budget_buckets b
    WHERE b.key = p_key
      AND ((b.bucket >= {MS_BUCKETS} AND b.bucket > now_ms - win)
           OR (b.bucket < {MS_BUCKETS} AND b.bucket >= (now_ms - win) / 1000 - 1
               AND b.bucket * 1000 + 999 > now_ms - win))
"""

ACQUIRE = f"""
CREATE FUNCTION dfm_rate_acquire(
    p_key text, p_lane text, p_limit bigint, p_window_ms bigint, p_fraction double precision,
    p_margin_ms bigint, p_reserve_fraction double precision, p_demand_ms bigint, p_grace_ms bigint,
    p_max_wait_ms bigint, p_quota bigint, p_quota_window bigint, p_quota_bucket bigint, p_purge boolean)
RETURNS TABLE (granted boolean, retry_ms bigint, at_ms bigint, used bigint, lane_limit bigint,
               window_limit bigint, window_ms bigint, quota_used bigint, quota_limit bigint,
               quota_retry_ms bigint, paused boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    st rate_budgets%ROWTYPE;
    now_ms bigint;
    win bigint;
    lim bigint;
    reserve bigint;
    allowed bigint;
    needed bigint;
    free_at bigint;
    quota_key text := p_key || '/quota';
    now_s bigint;
    q_bucket bigint;
    q_oldest bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('rate:' || p_key));
    now_ms := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    at_ms := now_ms;
    SELECT * INTO st FROM rate_budgets r WHERE r.key = p_key;
    -- p_fraction NULL: this replica does not learn (GHL_RATE_BUDGET_LEARN=false), whatever others did
    win := greatest(1, coalesce(CASE WHEN p_fraction IS NOT NULL THEN st.learned_interval_ms END, p_window_ms));
    window_ms := win;
    -- a grant holds its slot a margin longer than the window: GHL counts arrivals, and two
    -- requests granted a window apart arrive closer together when the first was slower
    win := win + greatest(0, p_margin_ms);
    lim := CASE WHEN st.learned_max IS NOT NULL AND p_fraction IS NOT NULL
                THEN greatest(1, floor(st.learned_max * p_fraction))::bigint ELSE p_limit END;
    window_limit := lim;
    reserve := CASE WHEN lim > 1 THEN least(lim - 1, greatest(1, ceil(lim * p_reserve_fraction)))::bigint
                    ELSE 0 END;
    IF p_lane = 'realtime' THEN
        allowed := lim;
    ELSIF st.realtime_waiting_until > clock_timestamp() THEN
        allowed := 0;
    ELSIF st.realtime_wanted_at > clock_timestamp() - p_demand_ms * interval '1 millisecond' THEN
        allowed := lim - reserve;
    ELSE
        allowed := lim;
    END IF;
    lane_limit := allowed;
    SELECT coalesce(sum(w.count), 0) INTO used FROM ({WINDOW_ROWS}) w;
    quota_limit := CASE WHEN p_quota IS NULL THEN NULL
                        ELSE least(p_quota, coalesce(CASE WHEN p_fraction IS NOT NULL
                                                          THEN st.learned_daily_max END, p_quota)) END;
    now_s := now_ms / 1000;
    q_bucket := now_s - (now_s % p_quota_bucket);
    quota_used := 0;
    quota_retry_ms := NULL;
    IF quota_limit IS NOT NULL THEN
        SELECT coalesce(sum(b.count), 0), min(b.bucket) INTO quota_used, q_oldest
        FROM rate_budget_buckets b WHERE b.key = quota_key AND b.bucket >= q_bucket - p_quota_window;
    END IF;
    paused := coalesce(st.paused_until > clock_timestamp(), false);
    granted := NOT paused AND used < allowed AND (quota_limit IS NULL OR quota_used < quota_limit);
    retry_ms := 0;
    IF granted THEN
        INSERT INTO rate_budget_buckets AS b (key, bucket, count) VALUES (p_key, now_ms, 1)
        ON CONFLICT (key, bucket) DO UPDATE SET count = b.count + 1;
        used := used + 1;
        IF quota_limit IS NOT NULL THEN
            INSERT INTO rate_budget_buckets AS b (key, bucket, count) VALUES (quota_key, q_bucket, 1)
            ON CONFLICT (key, bucket) DO UPDATE SET count = b.count + 1;
            quota_used := quota_used + 1;
        END IF;
    ELSE
        IF paused THEN
            retry_ms := ceil(extract(epoch FROM st.paused_until - clock_timestamp()) * 1000)::bigint;
        ELSIF allowed <= 0 THEN
            -- bulk holds back for a waiting realtime caller, until it has been served
            retry_ms := ceil(extract(epoch FROM st.realtime_waiting_until - clock_timestamp()) * 1000)::bigint;
        ELSIF used >= allowed THEN
            -- room for one more once the oldest (used - allowed + 1) grants have left the
            -- window: a grant at t leaves it at t + win
            needed := used - allowed + 1;
            SELECT min(c.pos) INTO free_at FROM (
                SELECT w.pos, sum(w.count) OVER (ORDER BY w.pos) AS running FROM ({WINDOW_ROWS}) w
            ) c WHERE c.running >= needed;
            retry_ms := coalesce(free_at + win - now_ms, 1);
        END IF;
        IF quota_limit IS NOT NULL AND quota_used >= quota_limit THEN
            -- the oldest counted quota bucket leaves one bucket after it is a full window old
            quota_retry_ms := greatest(1000, (coalesce(q_oldest, q_bucket) + p_quota_window + p_quota_bucket
                                              - now_s) * 1000);
            retry_ms := greatest(retry_ms, quota_retry_ms);
        END IF;
        retry_ms := greatest(1, retry_ms);
    END IF;
    IF p_lane = 'realtime' THEN
        INSERT INTO rate_budgets AS r (key, realtime_wanted_at) VALUES (p_key, clock_timestamp())
        ON CONFLICT (key) DO UPDATE SET realtime_wanted_at = excluded.realtime_wanted_at;
        IF NOT granted AND retry_ms <= p_max_wait_ms THEN
            -- this caller waits in-process and comes back at retry_ms (+ its jitter): until
            -- then and a grace after, bulk takes nothing, so the room goes to realtime first
            UPDATE rate_budgets r SET realtime_waiting_until = greatest(
                coalesce(r.realtime_waiting_until, '-infinity'),
                clock_timestamp() + (retry_ms + p_grace_ms) * interval '1 millisecond')
            WHERE r.key = p_key;
        END IF;
    END IF;
    IF p_purge THEN
        DELETE FROM rate_budget_buckets b WHERE b.key = p_key
            AND ((b.bucket >= {MS_BUCKETS} AND b.bucket < now_ms - greatest(60000, 2 * win))
                 OR (b.bucket < {MS_BUCKETS} AND b.bucket <= now_s - 60));
        DELETE FROM rate_budget_buckets b WHERE b.key = quota_key AND b.bucket < q_bucket - p_quota_window;
    END IF;
    RETURN NEXT;
END
$$
"""

OBSERVE = f"""
CREATE FUNCTION dfm_rate_observe(
    p_key text, p_max bigint, p_interval_ms bigint, p_remaining bigint, p_daily_max bigint,
    p_daily_remaining bigint, p_pause_ms bigint, p_limit bigint, p_window_ms bigint,
    p_fraction double precision, p_margin_ms bigint, p_quota bigint, p_quota_window bigint,
    p_quota_bucket bigint)
RETURNS TABLE (window_limit bigint, window_ms bigint, window_left bigint, adopted bigint,
               quota_adopted bigint, pause_until timestamptz, pause_started boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    st rate_budgets%ROWTYPE;
    now_ms bigint;
    win bigint;
    used bigint;
    q_limit bigint;
    q_used bigint;
    now_s bigint;
    q_bucket bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('rate:' || p_key));
    INSERT INTO rate_budgets AS r (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
    IF p_max IS NOT NULL OR p_interval_ms IS NOT NULL OR p_daily_max IS NOT NULL THEN
        UPDATE rate_budgets r SET learned_max = coalesce(p_max, r.learned_max),
                                  learned_interval_ms = coalesce(p_interval_ms, r.learned_interval_ms),
                                  learned_daily_max = coalesce(p_daily_max, r.learned_daily_max),
                                  learned_at = clock_timestamp()
        WHERE r.key = p_key;
    END IF;
    SELECT * INTO st FROM rate_budgets r WHERE r.key = p_key;
    now_ms := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    -- p_fraction NULL: this replica does not learn (GHL_RATE_BUDGET_LEARN=false), whatever others did
    win := greatest(1, coalesce(CASE WHEN p_fraction IS NOT NULL THEN st.learned_interval_ms END, p_window_ms));
    window_ms := win;
    -- a grant holds its slot a margin longer than the window: GHL counts arrivals, and two
    -- requests granted a window apart arrive closer together when the first was slower
    win := win + greatest(0, p_margin_ms);
    window_limit := CASE WHEN st.learned_max IS NOT NULL AND p_fraction IS NOT NULL
                         THEN greatest(1, floor(st.learned_max * p_fraction))::bigint ELSE p_limit END;
    adopted := 0;
    quota_adopted := 0;
    pause_started := false;
    SELECT coalesce(sum(w.count), 0) INTO used FROM ({WINDOW_ROWS}) w;
    IF p_remaining IS NOT NULL THEN
        -- GHL has fewer left than we think (another app, a replica of an older release, its
        -- window not ours): count the difference as spent now, so every replica sends less
        adopted := greatest(0, window_limit - used - greatest(0, p_remaining));
        IF adopted > 0 THEN
            INSERT INTO rate_budget_buckets AS b (key, bucket, count)
            VALUES (p_key, now_ms, adopted)
            ON CONFLICT (key, bucket) DO UPDATE SET count = b.count + excluded.count;
        END IF;
    END IF;
    window_left := greatest(0, window_limit - used - adopted);
    IF p_daily_remaining IS NOT NULL AND p_quota IS NOT NULL THEN
        q_limit := least(p_quota, coalesce(CASE WHEN p_fraction IS NOT NULL THEN st.learned_daily_max END, p_quota));
        now_s := now_ms / 1000;
        q_bucket := now_s - (now_s % p_quota_bucket);
        SELECT coalesce(sum(b.count), 0) INTO q_used FROM rate_budget_buckets b
        WHERE b.key = p_key || '/quota' AND b.bucket >= q_bucket - p_quota_window;
        quota_adopted := greatest(0, q_limit - q_used - greatest(0, p_daily_remaining));
        IF quota_adopted > 0 THEN
            INSERT INTO rate_budget_buckets AS b (key, bucket, count)
            VALUES (p_key || '/quota', q_bucket, quota_adopted)
            ON CONFLICT (key, bucket) DO UPDATE SET count = b.count + excluded.count;
        END IF;
    END IF;
    pause_until := st.paused_until;
    IF p_pause_ms IS NOT NULL AND NOT coalesce(st.paused_until > clock_timestamp(), false) THEN
        -- the first 429 of an episode pauses everyone; the 429s of requests already in flight
        -- arrive while it holds and neither extend it nor count again
        pause_until := clock_timestamp() + p_pause_ms * interval '1 millisecond';
        pause_started := true;
        UPDATE rate_budgets r SET paused_until = pause_until, pauses = r.pauses + 1
        WHERE r.key = p_key;
    END IF;
    RETURN NEXT;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "rate_budgets",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("learned_max", sa.Integer(), nullable=True),
        sa.Column("learned_interval_ms", sa.Integer(), nullable=True),
        sa.Column("learned_daily_max", sa.Integer(), nullable=True),
        sa.Column("learned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pauses", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("realtime_wanted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("realtime_waiting_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_budgets")),
    )
    op.execute(ACQUIRE)
    op.execute(OBSERVE)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION dfm_rate_observe(text, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, "
        "double precision, bigint, bigint, bigint, bigint)"
    )
    op.execute(
        "DROP FUNCTION dfm_rate_acquire(text, text, bigint, bigint, double precision, bigint, double precision, "
        "bigint, bigint, bigint, bigint, bigint, bigint, boolean)"
    )
    # millisecond buckets would look "recent" to dfm_rate_take forever: drop them
    op.execute(f"DELETE FROM rate_budget_buckets WHERE bucket >= {MS_BUCKETS}")
    op.drop_table("rate_budgets")
