"""Scheduler: several replicas, exactly one command per slot (spec/inbound.md §4.4)."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime

import pytest

from services.infra.cron import current_slot, parse_cron
from services.infra.settings import Settings
from tests.support.ingress_rig import stream_messages
from tests.support.jobs_rig import fetch, running_jobs
from tests.support.scheduler import read_until, scheduler_process, three_slots
from tests.support.sync_rig import eventually


def test_current_slot_is_the_latest_fire_time_not_after_now() -> None:
    trigger = parse_cron("*/5 * * * *")
    at = datetime(2026, 11, 27, 10, 7, 31, tzinfo=UTC)
    assert current_slot(trigger, at) == datetime(2026, 11, 27, 10, 5, tzinfo=UTC)
    assert current_slot(parse_cron("0 3 * * *"), at) == datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="5 fields"):
        parse_cron("* * *")


async def test_two_schedulers_for_three_slots_yield_exactly_three_sweeps(
    base_env: dict[str, str], settings: Settings, clean_db: str
) -> None:
    cron, slots = three_slots()
    async with running_jobs(settings):
        procs = [scheduler_process(base_env, cron) for _ in range(2)]
        logs: list[list[str]] = [[], []]
        try:
            for proc, lines in zip(procs, logs, strict=True):
                await read_until(proc, '"scheduled"', lines)
            assert datetime.now(UTC) < slots[0], "schedulers started too late for the first slot"
            for proc, lines in zip(procs, logs, strict=True):  # each fires every slot
                for _ in slots:
                    await read_until(proc, "scheduled_command", lines)

            async def three_runs() -> list[dict[str, object]] | None:
                runs = await fetch(
                    clean_db,
                    "SELECT totals, status FROM reconcile_runs WHERE job_name = 'pending-sweep' AND status = 'success'",
                )
                return runs if len(runs) >= 3 else None

            runs = await eventually(three_runs)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=20)
    results = [json.loads(line) for lines in logs for line in lines if "scheduled_command" in line]
    assert sorted(r["result"] for r in results) == ["duplicate"] * 3 + ["published"] * 3
    sweeps = await stream_messages(base_env["NATS_URL"], "jobs.sweep")
    assert len(sweeps) == 3
    expected = sorted(s.isoformat() for s in slots)
    assert sorted(json.loads(m.data)["slot"] for m in sweeps) == expected
    totals = [r["totals"] if isinstance(r["totals"], dict) else json.loads(r["totals"]) for r in runs]
    assert sorted(t["slot"] for t in totals) == expected
