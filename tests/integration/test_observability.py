"""Every metric the dashboard and the alert rules use exists in the code, and every process
without an HTTP app serves /metrics (STYLE.md §6) and the health probes on the same port."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import httpx
from prometheus_client import REGISTRY

import services.clients.http  # each import registers its metrics
import services.clients.verity
import services.gateway.app
import services.infra.delivery
import services.ingress.metrics
import services.jobs.alerts
import services.jobs.service
import services.jobs.sweep
import services.recorder.service
import services.scheduler.service  # noqa: F401
from services.infra.metrics_server import FetchLoop, ProcessHealth, serve_metrics
from services.infra.settings import Settings
from services.tooling.embedded import free_port

ROOT = Path(__file__).parents[2]


def known_metrics() -> set[str]:
    names: set[str] = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        names.update(s.name for s in metric.samples)
    return names


def used_metrics(text: str) -> set[str]:
    return set(re.findall(r"\b(dfm_[a-z_]+)", text))


def missing(used: set[str], known: set[str]) -> set[str]:
    return {m for m in used if not {m, m.removesuffix("_bucket"), m.removesuffix("_total")} & known}


def test_dashboard_panels_query_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dfm-overview.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    assert missing(used_metrics(" ".join(exprs)), known_metrics()) == set()


async def test_a_process_without_http_serves_its_metrics() -> None:
    port = free_port()
    assert serve_metrics(Settings(metrics_port=port), "ghl-sync") == port
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'dfm_process_info{service="ghl-sync"} 1.0' in text
    assert "dfm_events_total" in text and "dfm_vendor_requests_total" in text
    assert serve_metrics(Settings(metrics_port=port), "again") is None  # port taken: warning, no crash
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        live = await client.get("/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "live"})
        ready = await client.get("/health")  # a consumer whose fetch loop has not started yet
        assert ready.status_code == 503 and ready.json()["checks"]["fetch_loop"] == "starting"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_fetch_loop_is_wedged_only_when_every_slot_is_held_past_the_stall_bound() -> None:
    clock = Clock()
    loop = FetchLoop("ghl-sync", capacity=2, clock=clock)
    with loop.handling():
        clock.now += 600
        assert loop.check(stall_s=60) == "ok"  # one slot free: the loop fetches or waits for messages
        with loop.handling():
            clock.now += 59
            assert loop.check(stall_s=60) == "ok"  # a handler started 59 s ago: progress
            clock.now += 2
            assert loop.check(stall_s=60) == "stalled: 2 of 2 handlers busy, nothing started or finished for 61 s"
        assert loop.check(stall_s=60) == "ok"
        with loop.handling():
            clock.now += 30
        clock.now += 30  # the second handler finished 30 s ago, the first still runs
        with loop.handling():
            assert loop.check(stall_s=60) == "ok"
            clock.now += 61
            assert loop.check(stall_s=60).startswith("stalled")


async def test_readiness_names_each_failing_check_and_needs_the_event_loop_to_answer() -> None:
    health = ProcessHealth(probe_timeout_s=0.2)
    assert await asyncio.to_thread(health.probe) == (200, {"status": "ready", "checks": {}})  # no consumer
    health.expect_consumer()
    assert (await asyncio.to_thread(health.probe))[0] == 503  # a consumer not consuming yet
    connected = True

    async def nats() -> bool:
        return connected

    loop = FetchLoop("jobs", capacity=1)
    health.watch(Settings(dfm_health_stall_s=60), loop, nats)
    code, body = await asyncio.to_thread(health.probe)
    assert (code, body["checks"]) == (200, {"nats": "ok", "fetch_loop": "ok", "postgres": "ok"})
    connected = False
    code, body = await asyncio.to_thread(health.probe)
    assert (code, body["status"], body["checks"]["nats"]) == (503, "not ready", "disconnected")
    connected = True
    loop.drain()
    code, body = await asyncio.to_thread(health.probe)
    assert code == 503 and body["checks"]["draining"].startswith("stopping")

    answers: list[tuple[int, dict[str, object]]] = []
    prober = threading.Thread(target=lambda: answers.append(health.probe()))
    prober.start()
    time.sleep(0.5)  # noqa: ASYNC251 - the event loop blocked (the condition under test) past the probe's wait
    prober.join()
    assert answers == [(503, {"status": "not ready", "checks": {"event_loop": "no answer within 0.2 s"}})]
    health.forget(loop)
    assert (await asyncio.to_thread(health.probe))[1]["checks"] == {"fetch_loop": "starting"}
