"""``dfm up`` brings up NATS + PostgreSQL + migrations + streams and stops them on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest

from contracts.streams import GHL_SYNC, GHL_SYNC_BULK
from contracts.subjects import subject_matches
from services.infra.broker import ensure_topology
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats, free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _child_pids(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
async def test_dfm_up_with_nothing_configured_runs_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DFM_DATA_DIR": str(tmp_path / "data"),
        "INGRESS_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(120):
            while True:
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line, "dfm up exited early:\n" + "".join(lines)
                lines.append(line)
                if line.startswith("ready"):
                    break
        text = "".join(lines)
        nats_url = re.search(r"NATS\s+(nats://\S+) \(embedded", text)
        pg_url = re.search(r"PostgreSQL\s+(postgresql://\S+) \(embedded\)", text)
        assert nats_url and pg_url, text
        assert re.search(r"migrations  \d{4} \(head\)", text), text

        nc = await nats.connect(nats_url.group(1))
        try:
            js = nc.jetstream()
            assert (await js.stream_info("WEBHOOKS")).config.subjects == ["webhooks.>"]
            assert (await js.stream_info("JOBS")).config.subjects == ["jobs.>"]
            names = {c.name for c in await js.consumers_info("WEBHOOKS")}
            assert {"recorder", "ghl-sync", "aloware-sync", "verity-sync"} <= names
        finally:
            await nc.close()
        conn = await asyncpg.connect(pg_url.group(1))
        try:
            assert await conn.fetchval("SELECT count(*) FROM webhook_events") == 0
        finally:
            await conn.close()
        children = _child_pids(proc.pid)
        assert len(children) >= 3  # nats-server, ingress, recorder (+ postgres's own tree)
        assert proc.poll() is None

        # the stack is usable: a fixture sent with `dfm send` is accepted and recorded
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await client.get("/api/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass  # ingress still starting
                    await asyncio.sleep(0.1)
        fixture = Path(__file__).parents[1] / "fixtures/webhooks/aloware/contact-created.json"
        sent = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "send", str(fixture), "--source", "aloware"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert '"status":"accepted"' in sent.stdout or '"status":"duplicate"' in sent.stdout
        conn = await asyncpg.connect(pg_url.group(1))
        try:
            async with asyncio.timeout(15):
                while not await conn.fetchval("SELECT count(*) FROM webhook_events"):
                    await asyncio.sleep(0.1)
        finally:
            await conn.close()

        proc.send_signal(signal.SIGINT)
        rest = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, "".join(lines) + (rest[0] or "")
        assert "stopped" in (rest[0] or "")
        nats_pid = [p for p in children if _alive(p)]
        assert nats_pid == [], "processes left running after Ctrl-C"
        with pytest.raises(OSError):
            await asyncpg.connect(pg_url.group(1), timeout=2)
    finally:
        if proc.poll() is None:  # a failed assertion: stop the stack the way a user would
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_topology_creation_is_idempotent(nats_server: EmbeddedNats) -> None:
    settings = Settings(nats_url=nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        await ensure_topology(js, settings)
        info = await js.stream_info("WEBHOOKS")
        assert info.config.duplicate_window == settings.dfm_stream_duplicate_window
        consumer = await js.consumer_info("WEBHOOKS", "ghl-sync")
        assert consumer.config.max_deliver == 50
        assert consumer.config.filter_subjects == list(GHL_SYNC.filter_subjects)
        bulk = await js.consumer_info("WEBHOOKS", "ghl-sync-bulk")  # contact syncs: the bulk lane (#18)
        assert bulk.config.filter_subjects == list(GHL_SYNC_BULK.filter_subjects)
        assert any(
            subject_matches(f, "webhooks.aloware.contact.contact_created") for f in GHL_SYNC_BULK.filter_subjects
        )
    finally:
        await nc.close()
