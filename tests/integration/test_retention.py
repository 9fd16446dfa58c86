"""Retention (issue #16 item 10): the ``jobs.purge`` command deletes ``sync_log``,
``event_attempts``, ``outbound_writes`` and published outbox rows past their ages, empties the
payloads of finished events past theirs (the status rows stay: ``payload_json`` is NOT NULL,
so it becomes ``{}``) and drops ``payload_raw`` once the Verity forward (F-1) is done; in
bounded batches, counted in ``dfm_purged_rows_total{table}``; on the scheduler's
``PURGE_CRON``; and ``dfm purge --dry-run`` shows the counts without deleting anything.

Defaults: ``sync_log`` 180 days and ``outbound_writes`` 1 day (spec/outbound.md §4.3, §4.9),
``event_attempts`` and event payloads 30 days, published outbox rows 1 day, ``payload_raw``
one hour after its forward."""

from __future__ import annotations

import json
import signal
import uuid
from typing import Any

import nats
from prometheus_client import REGISTRY

from services.infra.settings import Settings
from tests.support.ingress_rig import stream_messages
from tests.support.jobs import cli
from tests.support.jobs_rig import execute, fetch, running_jobs
from tests.support.scheduler import read_until, scheduler_process, three_slots
from tests.support.sync_rig import eventually

TARGETS = (
    "sync_log",
    "event_attempts",
    "outbound_writes",
    "ingress_outbox",
    "webhook_events.payload",
    "webhook_events.payload_raw",
    "texting_webhook_events.payload",
    "broadcast_webhook_events.payload",
)
# what the arrangement below puts past each default age
EXPECTED = {
    "sync_log": 5,
    "event_attempts": 1,
    "outbound_writes": 1,
    "ingress_outbox": 1,
    "webhook_events.payload": 2,
    "webhook_events.payload_raw": 1,
    "texting_webhook_events.payload": 5,
    "broadcast_webhook_events.payload": 1,
}


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def arrange(db: str) -> dict[str, str]:
    """Rows either side of every default age; returns the ids the assertions name."""
    e = dict(
        zip(
            (
                "old_done",
                "forwarded",
                "not_forwarded",
                "fresh_forwarded",
                "old_error",
                "old_dead",
                "old_quarantined",
                "texting_old",
                "texting_new",
                "broadcast_old",
            ),
            ids(10),
            strict=True,
        )
    )

    async def webhook(key: str, age: str, status: str, raw: bool = True) -> None:
        await execute(
            db,
            "INSERT INTO webhook_events (id, received_at, source, event_type, event_token, "
            "canonical_type, entity_type, entity_id, payload_json, payload_raw, dedupe_key, status) "
            "VALUES ($1::uuid, now() - CAST($2::text AS interval), 'ghl', 'ContactCreate', 'contactcreate', "
            "'contact.created', 'contact', 'c-' || $3, '{\"firstName\": \"Ada\"}'::jsonb, $4, "
            "'purge:' || $3, $5)",
            e[key],
            age,
            key,
            b'{"firstName": "Ada"}' if raw else None,
            status,
        )

    await webhook("old_done", "31 days", "done")
    await webhook("forwarded", "29 days", "done")
    await webhook("not_forwarded", "2 hours", "done")
    await webhook("fresh_forwarded", "30 minutes", "done")
    await webhook("old_error", "31 days", "error")
    await webhook("old_dead", "31 days", "dead", raw=False)
    await webhook("old_quarantined", "31 days", "quarantined")
    for key, state in (("forwarded", "done"), ("not_forwarded", "error"), ("fresh_forwarded", "done")):
        await execute(
            db,
            "INSERT INTO event_deliveries (event_id, event_table, consumer, status, attempts) "
            "VALUES ($1::uuid, 'webhook', 'verity-sync', $2, 1)",
            e[key],
            state,
        )
    for key in ("forwarded", "fresh_forwarded"):
        await execute(
            db,
            "INSERT INTO sync_log (direction, entity_type, entity_id, source_id, status, "
            "started_at, correlation_id, rule) VALUES ('ghl_to_verity', 'contact', 'c', 'c', "
            "'success', now() - interval '10 minutes', $1, 'F-1')",
            e[key],
        )
    for key, age in (("texting_old", "31 days"), ("texting_new", "1 day")):
        await execute(
            db,
            "INSERT INTO texting_webhook_events (id, received_at, event_type, canonical_type, "
            "entity_id, from_number, payload_json, dedupe_key, status) VALUES ($1::uuid, "
            "now() - CAST($2::text AS interval), 'message.received', 'message.inbound', 'm-' || $3, '+15555550123', "
            "'{\"body\": \"hello\"}'::jsonb, 'purge:' || $3, 'done')",
            e[key],
            age,
            key,
        )
    # four more of each past the age, all received in the same second: batches of two must
    # walk on from where the last one ended (received_at, then id)
    await execute(
        db,
        "INSERT INTO texting_webhook_events (received_at, event_type, canonical_type, entity_id, "
        "payload_json, dedupe_key, status) SELECT date_trunc('second', now()) - interval '40 days', "
        "'message.received', 'message.inbound', 'm' || g, '{\"body\": \"hi\"}'::jsonb, "
        "'purge:more:' || g, 'done' FROM generate_series(1, 4) g",
    )
    await execute(
        db,
        "INSERT INTO sync_log (direction, entity_type, entity_id, source_id, status, started_at, "
        "correlation_id, rule) SELECT 'aloware_to_ghl', 'contact', 'old', 'old', 'success', "
        "now() - interval '200 days', 'old', 'CA' FROM generate_series(1, 4)",
    )
    await execute(
        db,
        "INSERT INTO broadcast_webhook_events (id, received_at, broadcast_id, event_type, payload_json, "
        "dedupe_key, status) VALUES ($1::uuid, now() - interval '31 days', 'b1', 'analytics_updated', "
        "'{\"x\": 1}'::jsonb, 'purge:b1', 'done')",
        e["broadcast_old"],
    )
    await execute(
        db,
        "INSERT INTO sync_log (direction, entity_type, entity_id, source_id, status, started_at, "
        "correlation_id, rule) VALUES ('aloware_to_ghl', 'contact', 'old', 'old', 'success', "
        "now() - interval '181 days', 'old', 'CA'), ('aloware_to_ghl', 'contact', 'kept', 'kept', "
        "'error', now() - interval '179 days', 'kept', 'CA')",
    )
    await execute(
        db,
        "INSERT INTO event_attempts (event_id, consumer, attempt, started_at, finished_at, status) "
        "VALUES ($1::uuid, 'ghl-sync', 1, now() - interval '31 days', now() - interval '31 days', 'done'), "
        "($2::uuid, 'ghl-sync', 1, now() - interval '29 days', now() - interval '29 days', 'done')",
        e["old_done"],
        e["forwarded"],
    )
    await execute(
        db,
        "INSERT INTO outbound_writes (system, entity_id, field_hash, written_at) VALUES "
        "('ghl', 'old', 'h', now() - interval '25 hours'), ('ghl', 'kept', 'h', now() - interval '23 hours')",
    )
    await execute(
        db,
        "INSERT INTO ingress_outbox (subject, dedupe_key, headers, body, created_at, published_at, "
        "failed_at) VALUES "
        "('webhooks.x', 'published-old', '{}', '\\x00', now() - interval '2 days', now() - interval '25 hours', NULL), "
        "('webhooks.x', 'published-new', '{}', '\\x00', now() - interval '2 days', now() - interval '23 hours', NULL), "
        "('webhooks.x', 'never-published', '{}', '\\x00', now() - interval '10 days', NULL, NULL), "
        "('webhooks.x', 'refused', '{}', '\\x00', now() - interval '10 days', NULL, now() - interval '9 days')",
    )
    return e


async def snapshot(db: str) -> dict[str, Any]:
    """Everything the purge may change, comparable before and after."""
    return {
        "sync_log": sorted(r["source_id"] for r in await fetch(db, "SELECT source_id FROM sync_log WHERE rule = 'CA'")),
        "event_attempts": len(await fetch(db, "SELECT 1 FROM event_attempts")),
        "outbound_writes": sorted(r["entity_id"] for r in await fetch(db, "SELECT entity_id FROM outbound_writes")),
        "ingress_outbox": sorted(r["dedupe_key"] for r in await fetch(db, "SELECT dedupe_key FROM ingress_outbox")),
        "events": {
            str(r["id"]): (r["status"], r["payload"], r["raw"])
            for r in await fetch(
                db,
                """
            SELECT id, status, payload_json::text AS payload, payload_raw IS NOT NULL AS raw FROM webhook_events
            UNION ALL SELECT id, status, payload_json::text, false FROM texting_webhook_events
            UNION ALL SELECT id, status, payload_json::text, false FROM broadcast_webhook_events""",
            )
        },
    }


def purged(target: str) -> float:
    return REGISTRY.get_sample_value("dfm_purged_rows_total", {"table": target}) or 0.0


async def publish_purge(nats_url: str, body: dict[str, Any]) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish("jobs.purge", json.dumps(body).encode())
    finally:
        await nc.close()


async def test_the_purge_deletes_exactly_what_is_past_each_age_and_keeps_the_status_rows(
    base_env: dict[str, str], clean_db: str
) -> None:
    e = await arrange(clean_db)
    # batches of two: every table needs more than one round (nothing is locked for long)
    settings = Settings(**{k.lower(): v for k, v in base_env.items()}, purge_batch_size=2)
    before = {t: purged(t) for t in TARGETS}
    async with running_jobs(settings):
        await publish_purge(base_env["NATS_URL"], {"requested_by": "test"})

        async def recorded() -> list[dict[str, Any]]:
            return await fetch(
                clean_db, "SELECT status, totals FROM reconcile_runs WHERE job_name = 'purge' AND status <> 'running'"
            )

        [run] = await eventually(recorded)
    totals = run["totals"] if isinstance(run["totals"], dict) else json.loads(run["totals"])
    assert run["status"] == "success" and totals["dryRun"] is False
    assert totals["tables"] == EXPECTED
    assert totals["batches"] > len(TARGETS)  # more than one round where there were more than two
    assert {t: purged(t) - before[t] for t in TARGETS} == EXPECTED

    after = await snapshot(clean_db)
    assert after["sync_log"] == ["kept"]  # 179 days old: inside the 180 days
    assert after["event_attempts"] == 1
    assert after["outbound_writes"] == ["kept"]
    # only published rows go: one never published or refused is an operator's to see
    assert after["ingress_outbox"] == ["never-published", "published-new", "refused"]
    events = after["events"]
    assert events[e["old_done"]] == ("done", "{}", False)  # the row stays, its payload is gone
    assert events[e["old_dead"]] == ("dead", "{}", False)
    assert events[e["texting_old"]] == ("done", "{}", False)
    assert events[e["broadcast_old"]] == ("done", "{}", False)
    assert events[e["forwarded"]] == ("done", '{"firstName": "Ada"}', False)  # forwarded: raw dropped
    assert events[e["not_forwarded"]] == ("done", '{"firstName": "Ada"}', True)  # F-1 still needs it
    assert events[e["fresh_forwarded"]] == ("done", '{"firstName": "Ada"}', True)  # younger than an hour
    assert events[e["old_error"]] == ("error", '{"firstName": "Ada"}', True)  # not finished: kept
    assert events[e["old_quarantined"]] == ("quarantined", '{"firstName": "Ada"}', True)
    assert events[e["texting_new"]] == ("done", '{"body": "hello"}', False)
    assert sorted(v for k, v in events.items() if k not in e.values()) == [("done", "{}", False)] * 4


async def test_dfm_purge_dry_run_prints_the_counts_and_deletes_nothing(base_env: dict[str, str], clean_db: str) -> None:
    await arrange(clean_db)
    before = await snapshot(clean_db)
    result = cli(base_env, "purge", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert counts(result.stdout) == EXPECTED
    assert "dry run: nothing deleted" in result.stdout
    assert await snapshot(clean_db) == before
    assert await fetch(clean_db, "SELECT 1 FROM reconcile_runs WHERE job_name = 'purge'") == []

    done = cli(base_env, "purge")
    assert done.returncode == 0, done.stderr
    assert counts(done.stdout) == EXPECTED
    assert (await snapshot(clean_db))["sync_log"] == ["kept"]
    again = cli(base_env, "purge", "--dry-run")
    assert counts(again.stdout) == dict.fromkeys(EXPECTED, 0)  # nothing left to do


def counts(stdout: str) -> dict[str, int]:
    """The ``<table> <rows>`` lines of ``dfm purge``."""
    pairs = [line.split() for line in stdout.splitlines()]
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


async def test_the_scheduler_publishes_the_purge_on_purge_cron(
    base_env: dict[str, str], settings: Settings, clean_db: str
) -> None:
    await arrange(clean_db)
    cron, slots = three_slots()
    only_first = cron.split(" ", 1)[0].split(",")[0] + " " + cron.split(" ", 1)[1]
    env = {**base_env, "PURGE_CRON": only_first, "SWEEP_CRON": ""}
    async with running_jobs(settings):
        proc = scheduler_process(env, "")
        lines: list[str] = []
        try:
            await read_until(proc, '"scheduled"', lines)
            await read_until(proc, "scheduled_command", lines)

            async def recorded() -> list[dict[str, Any]]:
                return await fetch(
                    clean_db, "SELECT totals FROM reconcile_runs WHERE job_name = 'purge' AND status = 'success'"
                )

            [run] = await eventually(recorded)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    [msg] = await stream_messages(base_env["NATS_URL"], "jobs.purge")
    command = json.loads(msg.data)
    assert (command["slot"], command["requested_by"], command["dry_run"]) == (slots[0].isoformat(), "scheduler", False)
    totals = run["totals"] if isinstance(run["totals"], dict) else json.loads(run["totals"])
    assert totals["tables"] == EXPECTED and totals["slot"] == slots[0].isoformat()
