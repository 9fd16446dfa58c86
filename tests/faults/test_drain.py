"""Zero-downtime stops: SIGTERM to real ``dfm run`` processes under load loses nothing and
processes nothing twice (issue: deployment and operations, "zero-downtime")."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.sandbox.app import create_sandbox_app
from services.tooling.embedded import free_port
from tests.support.contacts import ALOWARE_AUTH, aloware_contact, done
from tests.support.ingress_rig import running_ingress, running_recorder, serving, stream_messages
from tests.support.sync_rig import eventually, pipeline_settings

LOGS: dict[int, Path] = {}


def dfm_process(service: str, base_env: dict[str, str], log_dir: Path, **extra: str) -> subprocess.Popen[bytes]:
    """A real service process; its log goes to a file (a pipe nobody reads would block it)."""
    env = {"PATH": os.environ["PATH"], **base_env, "LOG_LEVEL": "info", **extra}
    log = log_dir / f"{service}-{len(LOGS)}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", service],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    LOGS[proc.pid] = log
    return proc


def log_of(proc: subprocess.Popen[bytes]) -> str:
    return LOGS[proc.pid].read_text(errors="replace")


async def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=1) as client, asyncio.timeout(30):
        while True:
            assert proc.poll() is None, log_of(proc)[-2000:]
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)


async def test_sigterm_to_the_ingress_drains_and_loses_no_accepted_event(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    proc = dfm_process(
        "ingress", base_env, tmp_path, INGRESS_PORT=str(port), DFM_DRAIN_GRACE_S="2", DFM_DRAIN_TIMEOUT_S="5"
    )
    base = f"http://127.0.0.1:{port}"
    accepted: list[str] = []
    refused = 0
    health: list[int] = []
    try:
        await wait_http(base + "/api/health/live", proc)
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def load() -> None:
                nonlocal refused
                n = 0
                while True:
                    n += 1
                    try:
                        answer = await client.post(
                            "/api/webhooks/aloware", headers=ALOWARE_AUTH, content=json.dumps(aloware_contact(5000 + n))
                        )
                    except httpx.TransportError:
                        refused += 1  # closed after the grace: a sender retries elsewhere
                        if proc.poll() is not None:
                            return
                        await asyncio.sleep(0.02)
                        continue
                    assert answer.status_code == 200, answer.text
                    accepted.append(answer.json()["id"])

            loader = asyncio.create_task(load())
            await eventually(lambda: _at_least(accepted, 30))
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            while time.monotonic() - started < 1.5:  # within the grace: not ready, still serving
                try:
                    health.append((await client.get("/api/health")).status_code)
                except httpx.TransportError:
                    break
                await asyncio.sleep(0.1)
            during_grace = len(accepted)
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 40)
            stopped_after = time.monotonic() - started
            await asyncio.wait_for(loader, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown
    assert 2 <= stopped_after < 15, stopped_after
    assert health and set(health) == {503}  # readiness said "take me out" during the grace
    assert during_grace > 30  # and webhooks were still accepted meanwhile
    on_stream = {m.headers["Dfm-Event-Id"] for m in await stream_messages(base_env["NATS_URL"])}
    assert set(accepted) <= on_stream  # every 2xx is durable
    assert len(accepted) == len(set(accepted))


def _at_least(items: list[Any], n: int) -> Any:
    async def check() -> bool:
        return len(items) >= n

    return check()


# ghl-sync's handlers: the default pool's, and one per lane (FastStream then runs the handler
# inside its fetch task, which the drain must let finish)
@pytest.mark.parametrize("pool", ["10", "3"], ids=["workers", "one_worker_per_lane"])
async def test_sigterm_to_a_consumer_finishes_its_messages_and_a_new_one_takes_the_rest(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, pool: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, DFM_CONSUMER_ACK_WAIT_S="3")
    env = {
        "GHL_API_KEY": "sandbox-ghl-key",
        "GHL_BASE_URL": settings.ghl_base_url,
        "DFM_CONSUMER_ACK_WAIT_S": "3",
        "DFM_DRAIN_TIMEOUT_S": "15",
        "DB_MAX_CONNECTIONS": pool,
    }
    async with AsyncExitStack() as stack:
        sandbox_url = await stack.enter_async_context(
            serving(create_sandbox_app(settings), "/_sandbox/calls", port=settings.sandbox_port)
        )
        sandbox = await stack.enter_async_context(httpx.AsyncClient(base_url=sandbox_url, timeout=10))
        await sandbox.post(
            "/_sandbox/faults", json={"vendor": "ghl", "count": 10_000, "latency_ms": 150, "path_contains": "/contacts"}
        )  # work stays in flight
        await stack.enter_async_context(running_recorder(settings))
        url = await stack.enter_async_context(running_ingress(settings, port=settings.ingress_port))
        ingress = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        first = dfm_process("ghl-sync", base_env, tmp_path, **env)
        ids = []
        for n in range(40):
            answer = await ingress.post(
                "/api/webhooks/aloware", headers=ALOWARE_AUTH, content=json.dumps(aloware_contact(6000 + n))
            )
            ids.append(answer.json()["id"])

        async def some_done() -> bool:
            return sum([bool(await done(clean_db, i)) for i in ids]) >= 3

        await eventually(some_done, timeout=60)
        first.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(asyncio.to_thread(first.wait), 30)
        stopped_log = log_of(first)
        assert code == 0, stopped_log[-2000:]
        second = dfm_process("ghl-sync", base_env, tmp_path, **env)
        try:

            async def all_done() -> bool:
                return all([await done(clean_db, i) for i in ids])

            await eventually(all_done, timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.to_thread(second.wait), 30)
        contacts = (await sandbox.get("/_sandbox/ghl/contacts")).json()
        creates = [
            c
            for c in (await sandbox.get("/_sandbox/calls", params={"vendor": "ghl"})).json()
            if c["method"] == "POST" and c["path"] == "/contacts/" and c["status"] == 201
        ]
    assert len(contacts) == len(ids) and len(creates) == len(ids)  # nothing lost, nothing twice
    assert "Traceback" not in stopped_log, stopped_log[stopped_log.find("Traceback") - 3000 :][:6000]


async def test_sigterm_to_the_recorder_under_load_records_every_event_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    from tests.support.jobs_rig import fetch

    settings = pipeline_settings(base_env, tmp_path)
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(running_ingress(settings, port=settings.ingress_port))
        ingress = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        # AckWait 3 s: a message the stopping process had fetched but not started returns fast
        first = dfm_process("recorder", base_env, tmp_path, DFM_CONSUMER_ACK_WAIT_S="3")
        accepted: list[str] = []

        async def started() -> bool:
            return "consumer_started" in log_of(first)

        await eventually(started, timeout=30)  # its SIGTERM handler is in place

        async def send(n: int) -> None:
            answer = await ingress.post(
                "/api/webhooks/aloware", headers=ALOWARE_AUTH, content=json.dumps(aloware_contact(8000 + n))
            )
            accepted.append(answer.json()["id"])

        for n in range(150):
            await send(n)
            if n == 75:
                first.send_signal(signal.SIGTERM)  # mid-traffic
        code = await asyncio.wait_for(asyncio.to_thread(first.wait), 30)
        assert code == 0, log_of(first)[-2000:]
        second = dfm_process("recorder", base_env, tmp_path, DFM_CONSUMER_ACK_WAIT_S="3")
        try:

            async def all_recorded() -> bool:
                rows = await fetch(
                    clean_db, "SELECT count(*) AS n FROM webhook_events WHERE id = ANY($1::uuid[])", accepted
                )
                return rows[0]["n"] == len(accepted)

            await eventually(all_recorded, timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.to_thread(second.wait), 30)
    rows = await fetch(clean_db, "SELECT count(*) AS n, count(DISTINCT dedupe_key) AS keys FROM webhook_events")
    assert rows[0]["n"] == rows[0]["keys"] == len(accepted) == 150
