"""Every metric the dashboard and the alert rules use exists in the code, and every process
without an HTTP app serves /metrics (STYLE.md §6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client import REGISTRY

import services.clients.http  # noqa: F401  (each import registers its metrics)
import services.clients.verity  # noqa: F401
import services.gateway.app  # noqa: F401
import services.infra.delivery  # noqa: F401
import services.ingress.metrics  # noqa: F401
import services.jobs.alerts  # noqa: F401
import services.jobs.service  # noqa: F401
import services.jobs.sweep  # noqa: F401
import services.recorder.service  # noqa: F401
import services.scheduler.service  # noqa: F401
from services.infra.metrics_server import serve_metrics
from services.infra.settings import Settings
from services.tooling.embedded import free_port

ROOT = Path(__file__).parents[1]


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
