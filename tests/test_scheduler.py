"""Scheduler: several replicas, exactly one command per slot (spec/inbound.md §4.4)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from services.infra.cron import current_slot, parse_cron
from services.infra.settings import Settings
from tests.ingress_rig import stream_messages
from tests.jobs_rig import fetch, running_jobs
from tests.sync_rig import eventually


def scheduler_process(base_env: dict[str, str], cron: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"], **base_env, "SWEEP_CRON": cron, "ALERT_CHECK_CRON": "",
           "LOG_FORMAT": "json"}
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", "scheduler"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def read_until(proc: subprocess.Popen[str], needle: str, lines: list[str], timeout: float = 30) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                raise AssertionError(f"scheduler exited: {''.join(lines[-20:])}")
            lines.append(line)
            if needle in line:
                return


def three_slots() -> tuple[str, list[datetime]]:
    """A six-field cron naming three seconds 2 s apart, at least 8 s ahead, in one minute."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    if start.second > 54:
        start = start.replace(second=0) + timedelta(minutes=1)
    slots = [start + timedelta(seconds=2 * i) for i in range(3)]
    cron = f"{','.join(str(s.second) for s in slots)} {start.minute} {start.hour} * * *"
    return cron, slots


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
                runs = await fetch(clean_db, "SELECT totals, status FROM reconcile_runs "
                                             "WHERE job_name = 'pending-sweep' AND status = 'success'")
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
