"""A replay of 5,000 events (issue #20, "Progress on long work"): queued through the admin API,
its ``reconcile_runs`` row shows the counts growing while the jobs service works and
``GET /api/admin/replays/{commandId}`` reads them, then the totals; ``dfm replay`` without a
terminal prints a progress line every N events and a summary, not a line per event; the MCP
``dfm_replay`` sends progress notifications while it waits (the official client). Neither
reads the stream once per event: the scan streams the envelopes in batches and the replay
re-publishes what it read, so the connection sends about one message per event (the
re-publish), not two (``/connz`` of a NATS server with its monitoring port on counts them)."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from contracts.envelope import WebhookEvent
from services.infra.broker import apply_topology
from services.infra.db.session import sync_url
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats, free_port
from tests.support.admin import ADMIN
from tests.support.ingress_rig import running_ingress
from tests.support.jobs import cli, probe_event
from tests.support.jobs_rig import running_jobs
from tests.support.mcp import mcp_env, mcp_session, sandbox_api

EVENTS = 5_000
SUBJECT = "webhooks.aloware.contact.>"
# what a connection may send besides one re-publish per event (stream info, the scan's
# consumer and its fetches, command acks and heartbeats); a get_msg per event is 5,000 more
OVERHEAD = 500


@pytest.fixture
async def monitored(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, int]]:
    """A NATS server of its own with the monitoring port on and the shipped topology."""
    monitor = free_port()
    server = EmbeddedNats(store_dir=tmp_path / "nats", extra_args=("-m", str(monitor))).start()
    nc = await nats.connect(server.url)
    try:
        await apply_topology(nc.jetstream(), Settings(nats_url=[server.url]))
    finally:
        await nc.close()
    yield server, monitor
    server.stop()


async def fill(url: str, db: str) -> list[WebhookEvent]:
    """``EVENTS`` aloware contact events on the stream, as the ingress publishes them, and
    their rows (done) pointing at them."""
    events = [probe_event(n) for n in range(EVENTS)]
    assert all(e.subject.startswith(SUBJECT[:-1]) for e in events)
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)
        futures = [await js.publish_async(e.subject, e.to_bytes(), headers=e.nats_headers()) for e in events]
        seqs = [(await f).seq for f in futures]
    finally:
        await nc.close()
    conn = await asyncpg.connect(sync_url(db))
    try:
        await conn.executemany(
            "INSERT INTO webhook_events (id, source, event_type, event_token, canonical_type, entity_type,"
            " entity_id, payload_json, dedupe_key, stream_seq, status)"
            " VALUES ($1, 'aloware', $2, $2, $3, 'contact', $4, $5::jsonb, $6, $7, 'done')",
            [
                (e.event_id, e.event_type, e.canonical_type, e.entity_id, json.dumps(e.payload), e.dedupe_key, seq)
                for e, seq in zip(events, seqs, strict=True)
            ],
        )
    finally:
        await conn.close()
    return events


def sent_by(monitor: int, name: str, state: str = "open") -> list[int]:
    """Messages each ``name`` connection sent to the server (publishes and requests)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz?state={state}&limit=1024", timeout=5) as resp:
        conns = json.load(resp)["connections"] or []
    return [c["in_msgs"] for c in conns if c.get("name") == name]


def env_for(base_env: dict[str, str], server: EmbeddedNats) -> dict[str, str]:
    return {**base_env, "NATS_URL": server.url}


def settings_for(env: dict[str, str]) -> Settings:
    fields: dict[str, Any] = {k.lower(): v for k, v in env.items()}  # as the environment gives them
    return Settings(**fields)


async def test_a_replay_queued_through_the_admin_api_reports_its_progress_while_it_runs(
    base_env: dict[str, str], clean_db: str, monitored: tuple[EmbeddedNats, int]
) -> None:
    server, monitor = monitored
    await fill(server.url, clean_db)
    settings = settings_for(env_for(base_env, server))
    async with (
        running_jobs(settings),
        running_ingress(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as api,
    ):
        before = sum(sent_by(monitor, "dfm-jobs"))
        queued = await api.post("/api/admin/replays", headers=ADMIN, json={"subject": SUBJECT})
        assert queued.status_code == 202, queued.text
        command_id = queued.json()["commandId"]
        assert queued.json()["statusUrl"] == f"/api/admin/replays/{command_id}"

        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(120):
            while True:
                answer = await api.get(f"/api/admin/replays/{command_id}", headers=ADMIN)
                if answer.status_code == 404:  # queued, not taken yet
                    assert not seen
                else:
                    assert answer.status_code == 200, answer.text
                    seen.append(answer.json())
                    if seen[-1]["status"] != "running":
                        break
                await asyncio.sleep(0.05)  # a poll interval: the replay runs meanwhile

    running = [s["done"] for s in seen if s["status"] == "running" and s.get("selected") == EVENTS]
    assert len(set(running)) >= 3, seen  # at least three different counts seen while it ran
    assert running == sorted(running) and 0 < max(running) < EVENTS, running
    final = seen[-1]
    assert final["status"] == "success", final
    assert {k: final[k] for k in ("selected", "done", "replayed", "skipped", "scanned")} == {
        "selected": EVENTS,
        "done": EVENTS,
        "replayed": EVENTS,
        "skipped": 0,
        "scanned": EVENTS,
    }
    assert final["startedAt"] and final["finishedAt"]
    # the jobs connection sent one re-publish per event, not also a get_msg per event
    sent = sum(sent_by(monitor, "dfm-jobs", "all")) - before
    assert EVENTS <= sent < EVENTS + OVERHEAD, sent


async def test_dfm_replay_without_a_terminal_prints_progress_lines_and_a_summary(
    base_env: dict[str, str], clean_db: str, monitored: tuple[EmbeddedNats, int]
) -> None:
    server, monitor = monitored
    events = await fill(server.url, clean_db)
    # a hang guard, not a speed test: 5,000 re-publishes ran at ~80/s with three xdist
    # workers on two cores, just over the default 60 s (bench/ measures speed)
    result = await asyncio.to_thread(
        functools.partial(cli, timeout=300),
        env_for(base_env, server),
        "replay",
        "--subject",
        SUBJECT,
        "--progress-every",
        "1000",
    )
    assert result.returncode == 0, result.stderr
    progress = re.findall(r"^dfm replay: (\d+) of (\d+) events, \d+ events/s, eta \d+ s$", result.stderr, re.M)
    assert [(int(d), int(t)) for d, t in progress] == [(n, EVENTS) for n in range(1000, EVENTS + 1, 1000)]
    out = result.stdout.splitlines()
    assert len(out) == 1, result.stdout  # the summary, no line per event
    assert re.fullmatch(
        rf"scanned {EVENTS} stream messages; replayed {EVENTS}, skipped 0 in \d+\.\d s \(\d+ events/s\)", out[0]
    ), out
    assert not any(str(e.event_id) in result.stdout + result.stderr for e in events[:50])
    (sent,) = sent_by(monitor, "dfm-cli", "closed")
    assert EVENTS <= sent < EVENTS + OVERHEAD, sent


async def test_the_mcp_replay_sends_progress_notifications_while_it_waits(
    base_env: dict[str, str], clean_db: str, monitored: tuple[EmbeddedNats, int]
) -> None:
    server, _ = monitored
    await fill(server.url, clean_db)
    settings = settings_for(env_for(base_env, server))
    heard: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append((progress, total, message))

    async with (
        sandbox_api() as (url, _),
        running_jobs(settings),
        mcp_session(mcp_env(env_for(base_env, server), url)) as session,
    ):
        result = await session.call_tool("dfm_replay", {"subject": SUBJECT}, progress_callback=on_progress)
        assert not result.is_error, result
        report = result.structured_content
        assert report is not None
        assert report["dryRun"] is True and report["wouldReplay"] == EVENTS and report["selected"] == EVENTS
        status = await session.call_tool("dfm_replay_status", {"command_id": report["commandId"]})
        assert not status.is_error and status.structured_content is not None
        assert status.structured_content["status"] == "success" and status.structured_content["done"] == EVENTS

    counts = [p for p, total, _ in heard if total == EVENTS]
    assert len(set(counts)) >= 2 and counts == sorted(counts), heard  # it moved while the tool waited
    assert heard[-1][2] is not None and heard[-1][2].startswith("replayed ")
