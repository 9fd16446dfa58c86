"""Helpers shared by several test modules."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta


def scheduler_process(base_env: dict[str, str], cron: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"], **base_env, "SWEEP_CRON": cron, "ALERT_CHECK_CRON": "", "LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", "scheduler"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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


__all__ = ["read_until", "scheduler_process", "three_slots"]
