"""daily quota: dfm_rate_take_with_quota()

GHL allows 200,000 requests per day per app and location besides the 100 per 10 s burst
(spec/outbound.md §2.1); ``GHL_RATE_LIMIT_PER_DAY`` was declared but nothing counted it, so
a backlog flush or a loop could spend the day's quota and then every GHL call of the
location failed with 429 until GHL's day turned. The new function checks both windows under
the one advisory lock of ``dfm_rate_take`` and takes from both or from neither, so every
replica sees the same count and a refusal by one window never spends the other.

The quota is a rolling window (GHL does not say when its day starts; a rolling 24 h holds
whatever day it uses) counted in ``rate_budget_buckets`` under ``<key>/quota`` in buckets
``p_quota_bucket`` seconds wide. A request is allowed when the buckets that can overlap the
window hold fewer than the quota, so the count errs by at most one bucket, on the safe side.
``dfm_rate_take`` stays for replicas of the previous release during a rolling deploy: both
count the burst in the same rows.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 22:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TAKE_WITH_QUOTA = """
CREATE FUNCTION dfm_rate_take_with_quota(p_key text, p_now bigint, p_window bigint, p_limit bigint,
                                         p_quota_window bigint, p_quota_bucket bigint, p_quota bigint,
                                         p_purge boolean)
RETURNS TABLE (granted boolean, oldest bigint, quota_used bigint, quota_oldest bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    used bigint;
    quota_key text := p_key || '/quota';
    quota_bucket bigint := p_now - (p_now % p_quota_bucket);
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('rate:' || p_key));
    SELECT coalesce(sum(b.count), 0), min(b.bucket) INTO used, oldest
    FROM rate_budget_buckets b WHERE b.key = p_key AND b.bucket >= p_now - p_window;
    SELECT coalesce(sum(b.count), 0), min(b.bucket) INTO quota_used, quota_oldest
    FROM rate_budget_buckets b WHERE b.key = quota_key AND b.bucket >= quota_bucket - p_quota_window;
    granted := used < p_limit AND quota_used < p_quota;
    IF granted THEN
        INSERT INTO rate_budget_buckets AS b (key, bucket, count) VALUES (p_key, p_now, 1)
        ON CONFLICT (key, bucket) DO UPDATE SET count = b.count + 1;
        INSERT INTO rate_budget_buckets AS b (key, bucket, count) VALUES (quota_key, quota_bucket, 1)
        ON CONFLICT (key, bucket) DO UPDATE SET count = b.count + 1;
        quota_used := quota_used + 1;
        quota_oldest := coalesce(quota_oldest, quota_bucket);
    END IF;
    IF p_purge THEN
        DELETE FROM rate_budget_buckets b WHERE b.key = p_key AND b.bucket <= p_now - 60;
        DELETE FROM rate_budget_buckets b WHERE b.key = quota_key AND b.bucket < quota_bucket - p_quota_window;
    END IF;
    RETURN NEXT;
END
$$
"""


def upgrade() -> None:
    op.execute(TAKE_WITH_QUOTA)


def downgrade() -> None:
    op.execute("DROP FUNCTION dfm_rate_take_with_quota(text, bigint, bigint, bigint, bigint, bigint, bigint, boolean)")
    # the quota's buckets mean nothing to dfm_rate_take (their key differs) but would never be purged
    op.execute("DELETE FROM rate_budget_buckets WHERE key LIKE '%/quota'")
