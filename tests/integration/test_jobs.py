"""Jobs: the pending sweep, replays and quarantine, end to end through the ingress, NATS,
the sync consumers and the sandbox vendors (spec/inbound.md §4.2–§4.5)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.commands import ReconcileRequested, ReplayRequested
from contracts.envelope import WebhookEvent
from services.infra.redrive import publish_redrive
from tests.conftest import TEST_SECRETS
from tests.support.contacts import aloware_contact, send_aloware
from tests.support.jobs import _consumer_passed, all_in, cli, rows
from tests.support.jobs_rig import execute, fetch, running_jobs
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

JOBS_AUTH = {"X-DF-Jobs-Secret": TEST_SECRETS["X_DF_JOBS_SECRET"]}
ADMIN_AUTH = {"X-DF-ADMIN-SECRET": "admin-secret-2"}


async def sweep_now(p: Pipeline, db: str) -> dict[str, Any]:
    """POST process-pending and wait for that sweep's reconcile_runs row to finish."""
    answer = await p.ingress.post("/api/jobs/process-pending", headers=JOBS_AUTH)
    assert answer.status_code == 202, answer.text
    sweep_id = answer.json()["sweepId"]

    async def finished() -> dict[str, Any] | None:
        found = await fetch(
            db,
            "SELECT * FROM reconcile_runs WHERE job_name = 'pending-sweep' "
            "AND totals->>'commandId' = $1 AND status <> 'running'",
            sweep_id,
        )
        return found[0] if found else None

    run = await eventually(finished)
    assert run["status"] == "success", run
    return json.loads(run["totals"]) if isinstance(run["totals"], str) else run["totals"]


async def due(db: str, ids: list[str]) -> bool:
    """Every one of ``ids`` in error with its next attempt due (the consumer has finished)."""
    found = await fetch(
        db,
        "SELECT count(*) AS n FROM webhook_events WHERE id = ANY($1::uuid[]) "
        "AND status = 'error' AND next_attempt_at <= now()",
        ids,
    )
    return found[0]["n"] == len(ids)


async def ghl_writes(p: Pipeline) -> list[dict[str, Any]]:
    return [
        c
        for c in await p.calls("ghl")
        if c["method"] in ("POST", "PUT", "DELETE") and "/search" not in c["path"] and c["status"] < 300
    ]


async def test_sweep_redrives_errors_until_the_vendor_recovers_and_spent_budgets_end_dead(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(
        base_env,
        tmp_path,
        RETRY_MAX_ATTEMPTS="3",
        RETRY_BASE_DELAY_S="0.5",
        RETRY_MAX_DELAY_S="1",
        DFM_RETRY_NAK_MAX_DELAY_S="0",  # every retry is the sweep's job, not a JetStream NAK
    )
    async with running_pipeline(settings) as p, running_jobs(settings):
        await p.sandbox.post("/_sandbox/faults", json={"vendor": "ghl", "count": 100_000, "status": 503})
        doomed = [(await send_aloware(p, aloware_contact(n)))["id"] for n in (1, 2, 3)]
        await eventually(lambda: all_in(clean_db, doomed, "error"))
        for attempt in (2, 3):  # the vendor is still down: each sweep costs one attempt
            await eventually(lambda: due(clean_db, doomed))
            totals = await sweep_now(p, clean_db)
            assert totals["webhook"]["S3"] == 3
            await eventually(lambda a=attempt: _attempts_reached(clean_db, doomed, a))
        found = await rows(clean_db, doomed)
        for row in found.values():
            assert (row["status"], row["attempts"]) == ("dead", 3)
            assert row["error_message"].startswith("retry budget spent: ghl 503")

        healed = [(await send_aloware(p, aloware_contact(n)))["id"] for n in (4, 5, 6)]
        await eventually(lambda: all_in(clean_db, healed, "error"))
        await p.sandbox.delete("/_sandbox/faults")  # the vendor recovers
        await eventually(lambda: due(clean_db, healed))
        totals = await sweep_now(p, clean_db)
        assert totals["webhook"]["S3"] == 3  # the dead ones are not re-driven
        await eventually(lambda: all_in(clean_db, healed, "done"))
        assert all(r["outcome"] == "applied" and r["attempts"] == 2 for r in (await rows(clean_db, healed)).values())
        assert all(r["status"] == "dead" for r in (await rows(clean_db, doomed)).values())
        phones = sorted(c["phone"] for c in await p.ghl_contacts())
        assert phones == ["+15555550004", "+15555550005", "+15555550006"]
        creates = [c for c in await ghl_writes(p) if c["method"] == "POST"]
        assert len(creates) == 3


async def _attempts_reached(db: str, ids: list[str], attempts: int) -> bool:
    found = await rows(db, ids)
    return all(r["attempts"] >= attempts and r["status"] in ("error", "dead") for r in found.values())


async def test_sweep_returns_a_stale_claim_to_pending_and_redrives_it_from_its_row(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """A consumer died mid-claim long ago and the stream no longer has the message: S2 puts
    the event back to pending and S1 re-drives it, rebuilt from its PostgreSQL row."""
    settings = pipeline_settings(base_env, tmp_path, SWEEP_STALE_PROCESSING_S="60")
    async with running_pipeline(settings) as p, running_jobs(settings):
        payload = aloware_contact(21)
        await execute(
            clean_db,
            """
            INSERT INTO webhook_events (id, received_at, source, event_type, event_token, canonical_type,
                entity_type, entity_id, payload_json, dedupe_key, status, attempts, claimed_at)
            VALUES ('7d0f1b5e-0000-4000-8000-000000000021', now() - interval '2 hours', 'aloware',
                'Contact Created', 'contact_created', 'contact.created', 'contact', '8000021',
                $1::jsonb, 'aloware:stale:21', 'processing', 1, now() - interval '1 hour')""",
            json.dumps(payload),
        )
        await execute(
            clean_db,
            """
            INSERT INTO event_deliveries (event_id, consumer, event_table, status, attempts, claimed_at)
            VALUES ('7d0f1b5e-0000-4000-8000-000000000021', 'ghl-sync', 'webhook', 'processing', 1,
                    now() - interval '1 hour')""",
        )
        totals = await sweep_now(p, clean_db)
        assert (totals["webhook"]["S2"], totals["webhook"]["S1"]) == (1, 1)
        ident = "7d0f1b5e-0000-4000-8000-000000000021"
        await eventually(lambda: all_in(clean_db, [ident], "done"))
        row = (await rows(clean_db, [ident]))[ident]
        assert (row["outcome"], row["attempts"]) == ("applied", 2)
        [contact] = await p.ghl_contacts()
        assert contact["phone"] == "+15555550021"


async def test_replay_writes_nothing_for_done_events_and_recreates_a_deleted_contact_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        started = datetime.now(UTC)
        ids = [(await send_aloware(p, aloware_contact(n)))["id"] for n in (31, 32, 33)]
        await eventually(lambda: all_in(clean_db, ids, "done"))
        writes_before = len(await ghl_writes(p))
        assert writes_before == 3

        async def replay(tag: int) -> None:
            command = ReplayRequested(subject="webhooks.aloware.>", since=started, requested_by=f"test{tag}")
            await jobs.js.publish(
                "jobs.replay",
                command.model_dump_json().encode(),
                headers={"Nats-Msg-Id": f"replay:{command.command_id}"},
            )
            await eventually(lambda: _replayed(clean_db, ids, str(command.command_id)))

        await replay(1)
        assert len(await ghl_writes(p)) == writes_before  # zero new vendor writes
        assert all(r["outcome"] == "skipped" for r in (await rows(clean_db, ids)).values())

        gone = next(c for c in await p.ghl_contacts() if c["phone"] == "+15555550032")
        await p.sandbox.delete(
            f"/ghl/contacts/{gone['id']}", headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}
        )
        writes_before = len(await ghl_writes(p))  # the test's own DELETE is recorded too
        await replay(2)
        new_writes = (await ghl_writes(p))[writes_before:]
        assert [(c["method"], c["path"]) for c in new_writes] == [("POST", "/contacts/")]
        assert len(await p.ghl_contacts()) == 3
        await replay(3)
        assert len(await ghl_writes(p)) == writes_before + 1


async def _replayed(db: str, ids: list[str], command_id: str) -> bool:
    found = await fetch(
        db,
        "SELECT DISTINCT event_id FROM event_attempts WHERE replay_of = $1 AND event_id = ANY($2::uuid[])",
        f"replay:{command_id}",
        ids,
    )
    return len(found) == len(ids) and await all_in(db, ids, "done")


async def test_replay_dry_run_prints_plans_and_changes_nothing(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    # no sandbox webhooks: the GHL echoes of the writes would land while the rows are compared
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        ids = [(await send_aloware(p, aloware_contact(n)))["id"] for n in (41, 42)]
        await eventually(lambda: all_in(clean_db, ids, "done"))
        before = await fetch(clean_db, "SELECT id, status, attempts FROM webhook_events ORDER BY id")
        assert sorted(str(r["id"]) for r in before) == sorted(ids)
        result = cli(base_env, "replay", "--subject", "webhooks.aloware.contact.>", "--dry-run")
        assert result.returncode == 0, result.stderr
        assert "would replay 2, skipped 0" in result.stdout
        assert result.stdout.count("ghl-sync CA: re-read GHL contact") == 2
        assert "nothing to write if GHL still matches" in result.stdout
        assert await fetch(clean_db, "SELECT id, status, attempts FROM webhook_events ORDER BY id") == before
        assert await fetch(clean_db, "SELECT * FROM event_attempts WHERE replay_of IS NOT NULL") == []


async def test_a_quarantined_event_is_not_processed_when_redelivered_swept_or_replayed(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, RETRY_BASE_DELAY_S="0.2", DFM_RETRY_NAK_MAX_DELAY_S="0")
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        await p.sandbox.post("/_sandbox/faults", json={"vendor": "ghl", "count": 100_000, "status": 503})
        ident = (await send_aloware(p, aloware_contact(51)))["id"]
        await eventually(lambda: all_in(clean_db, [ident], "error"))
        answer = await p.ingress.post(
            f"/api/admin/events/{ident}/quarantine",
            headers=ADMIN_AUTH,
            json={"reason": "poison suspected", "quarantinedBy": "ops"},
        )
        assert answer.status_code == 200 and answer.json()["message"] == "Event quarantined"
        await p.sandbox.delete("/_sandbox/faults")
        attempts_before = await fetch(clean_db, "SELECT count(*) AS n FROM event_attempts")

        [row] = await fetch(clean_db, "SELECT * FROM webhook_events WHERE id = $1::uuid", ident)
        event = WebhookEvent.from_bytes((await jobs.js.get_msg("WEBHOOKS", row["stream_seq"])).data)
        seq = await publish_redrive(jobs.js, event, "test:redelivery")
        await eventually(lambda: _consumer_passed(jobs, seq))
        totals = await sweep_now(p, clean_db)
        assert totals["webhook"]["S3"] == 0
        refused = await p.ingress.post(f"/api/admin/events/{ident}/replay", headers=ADMIN_AUTH)
        assert refused.status_code == 409
        command = ReplayRequested(event_ids=[event.event_id])
        report = await jobs.execute(command)
        assert report.items[0].action == "skipped" and "quarantined" in report.items[0].reason

        assert await fetch(clean_db, "SELECT count(*) AS n FROM event_attempts") == attempts_before
        assert [c for c in await ghl_writes(p)] == []
        [row] = await fetch(clean_db, "SELECT status FROM webhook_events WHERE id = $1::uuid", ident)
        assert row["status"] == "quarantined"

        forced = await p.ingress.post(f"/api/admin/events/{ident}/replay", headers=ADMIN_AUTH, json={"force": True})
        assert forced.status_code == 200, forced.text
        await eventually(lambda: all_in(clean_db, [ident], "done"))
        [q] = await fetch(clean_db, "SELECT released_at FROM quarantine_events WHERE event_id = $1::uuid", ident)
        assert q["released_at"] is not None
        assert len(await p.ghl_contacts()) == 1


async def test_reconcile_heals_a_missed_ghl_webhook_and_counts_drift(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="ghl")
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        for n in (81, 82, 83):  # people create contacts in GHL; aloware-sync copies them
            created = await p.sandbox.post(
                "/ghl/contacts/",
                json={
                    "locationId": settings.ghl_location_id,
                    "firstName": f"P{n}",
                    "lastName": "Sample",
                    "phone": f"+155555500{n}",
                },
                headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
            )
            assert created.status_code == 201
        await eventually(lambda: _mappings(clean_db, 3))
        by_phone = {c["phone"]: c for c in await p.ghl_contacts()}
        edited, deleted = by_phone["+15555550081"], by_phone["+15555550082"]
        assert (
            await p.sandbox.patch(f"/_sandbox/ghl/contacts/{edited['id']}", json={"firstName": "Renamed"})
        ).status_code == 200
        assert (await p.sandbox.delete(f"/_sandbox/ghl/contacts/{deleted['id']}")).status_code == 200

        totals = await jobs.execute(ReconcileRequested(limit=2))  # two pages with a checkpoint between
        totals2 = await jobs.execute(ReconcileRequested(limit=2))
        merged = {k: totals[k] + totals2[k] for k in totals}
        assert merged == {"driftCount": 1, "repairsCount": 1, "errors": 0, "totalProcessed": 3}

        async def aloware_renamed() -> bool:
            return any(c.get("first_name") == "Renamed" for c in await p.aloware_contacts())

        await eventually(aloware_renamed)

        async def repair_done() -> list[dict[str, Any]]:
            return await fetch(
                clean_db,
                "SELECT status, outcome FROM webhook_events "
                "WHERE dedupe_key LIKE 'reconcile:contact:%' AND status = 'done'",
            )

        [repair] = await eventually(repair_done)
        assert repair["outcome"] == "applied"
        again = await jobs.execute(ReconcileRequested())  # GHL and our snapshot agree again
        assert again == {"driftCount": 1, "repairsCount": 0, "errors": 0, "totalProcessed": 3}
        runs = await fetch(clean_db, "SELECT status FROM reconcile_runs WHERE job_name = 'reconcile-contacts'")
        assert [r["status"] for r in runs] == ["success"] * 3
        [state] = await fetch(clean_db, "SELECT cursor_id, last_success_at FROM sync_state")
        assert state["cursor_id"] is None and state["last_success_at"] is not None  # wrapped around


async def _mappings(db: str, n: int) -> bool:
    found = await fetch(db, "SELECT count(*) AS n FROM contact_mappings WHERE ghl_snapshot IS NOT NULL")
    return found[0]["n"] >= n
