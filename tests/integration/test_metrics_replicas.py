"""Metrics that add up (issue #20): gauges that describe the whole database or stream are the
same on every jobs replica, so the alert rules and the dashboard take their ``max`` across
replicas, never their ``sum``; the ingress with several workers exports one set of counters
(prometheus_client's multiprocess mode) that adds up to the requests it answered.

Two real ``dfm run jobs`` processes on one database and one stream are scraped as Prometheus
would (each target's samples labelled with its ``instance``), and the expressions of
deploy/prometheus/alerts.yml and deploy/grafana/dfm-overview.json are evaluated over them by
a small evaluator of the PromQL they use (selectors, ``sum``/``max``/``min`` with ``by``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import yaml
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from contracts.streams import CONSUMERS
from services.infra.settings import Settings
from services.tooling.embedded import free_port
from tests.conftest import TEST_SECRETS
from tests.support.ingress_rig import count_rows, running_ingress, running_recorder
from tests.support.process_rig import http_service
from tests.support.sync_rig import eventually

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dfm-overview.json"
PENDING = 7
TEXTING_SECRET = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]


# --- a small PromQL evaluator: instant vectors, selectors, sum/max/min [by (...)] -------------
@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


Vector = list[tuple[dict[str, str], float]]
AGGREGATE = re.compile(r"\s*(sum|max|min)\s*(?:by\s*\(([^)]*)\))?\s*\(")
SELECTOR = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'\s*([a-zA-Z_]+)\s*(=~|!=|=)\s*"([^"]*)"\s*,?')
COMBINE = {"sum": sum, "max": max, "min": min}


def evaluate(expr: str, samples: list[Sample]) -> Vector:
    """The instant vector of ``expr`` (the subset of PromQL above) over scraped ``samples``."""
    vector, rest = _expression(expr, samples)
    assert rest.strip() == "", f"not understood: {rest!r}"
    return vector


def _expression(text: str, samples: list[Sample]) -> tuple[Vector, str]:
    aggregate = AGGREGATE.match(text)
    if aggregate:
        op, by = aggregate.group(1), [b.strip() for b in (aggregate.group(2) or "").split(",") if b.strip()]
        inner, rest = _expression(text[aggregate.end() :], samples)
        assert rest.lstrip().startswith(")"), rest
        groups: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for labels, value in inner:
            groups.setdefault(tuple((b, labels.get(b, "")) for b in by), []).append(value)
        return [(dict(key), COMBINE[op](values)) for key, values in groups.items()], rest.lstrip()[1:]
    selector = SELECTOR.match(text)
    assert selector, text
    name, matchers = selector.group(1), MATCHER.findall(selector.group(2) or "")
    picked = [(s.labels, s.value) for s in samples if s.name == name and all(_matches(s.labels, m) for m in matchers)]
    return picked, text[selector.end() :]


def _matches(labels: dict[str, str], matcher: tuple[str, str, str]) -> bool:
    label, op, value = matcher
    actual = labels.get(label, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    return re.fullmatch(value, actual) is not None


def test_the_evaluator_sums_and_maxes_like_prometheus() -> None:
    samples = [
        Sample("m", {"instance": "a", "table": "t1"}, 3),
        Sample("m", {"instance": "b", "table": "t1"}, 3),
        Sample("m", {"instance": "a", "table": "t2"}, 4),
        Sample("m", {"instance": "b", "table": "t2", "status": "x"}, 9),
    ]
    assert evaluate("sum(m)", samples) == [({}, 19)]
    assert evaluate('sum(max by (table) (m{status!="x"}))', samples) == [({}, 7)]
    assert sorted(evaluate("max by (table) (m)", samples), key=lambda v: v[0]["table"]) == [
        ({"table": "t1"}, 3),
        ({"table": "t2"}, 9),
    ]
    assert evaluate('min(m{table=~"t[12]", instance="a"})', samples) == [({}, 3)]


def alert_expression(name: str) -> tuple[str, float]:
    """The left side and the threshold of the rule ``name`` in alerts.yml."""
    [group] = yaml.safe_load(RULES.read_text())["groups"]
    [rule] = [r for r in group["rules"] if r["alert"] == name]
    left, threshold = re.fullmatch(r"(.*)>\s*([0-9.]+)", rule["expr"].strip(), re.S).groups()  # type: ignore[union-attr]
    return left.strip(), float(threshold)


def dashboard_expressions(metric: str) -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"] if metric in t["expr"]]


async def scrape(client: httpx.AsyncClient, instance: str) -> list[Sample]:
    """One target's samples with the ``instance`` and ``job`` labels Prometheus adds."""
    text = (await client.get(f"http://{instance}/metrics")).text
    return [
        Sample(s.name, {**s.labels, "instance": instance, "job": "jobs"}, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


@contextmanager
def jobs_replicas(env: dict[str, str], logs: Path, count: int) -> Iterator[list[str]]:
    """``count`` ``dfm run jobs`` processes; yields the ``host:port`` of their metrics ports."""
    with ExitStack() as stack:
        instances = []
        for n in range(count):
            base, _ = stack.enter_context(http_service("jobs", env, "METRICS_PORT", "/metrics", logs / f"jobs-{n}.log"))
            instances.append(base.removeprefix("http://"))
        yield instances


async def record_texting_events(settings: Settings, database_url: str, count: int) -> None:
    """``count`` accepted texting webhooks, recorded as pending (no consumer works on them)."""
    async with running_ingress(settings) as base, running_recorder(settings):
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for n in range(count):
                body = {
                    "eventType": "message.received",
                    "messageId": f"gauge-{uuid.uuid4().hex}-{n}",
                    "from": "+15555550101",
                    "to": "+15555550100",
                    "body": f"pending {n}",
                    "timestamp": "2026-01-01T00:00:00Z",
                }
                answer = await client.post(
                    "/api/webhooks/texting", json=body, headers={"X-Texting-Secret": TEXTING_SECRET}
                )
                assert answer.status_code == 200, answer.text

        async def recorded() -> bool:
            return await count_rows(database_url, "texting_webhook_events") == count

        await eventually(recorded)


async def true_pending(database_url: str) -> int:
    total = 0
    for table in ("webhook_events", "texting_webhook_events", "broadcast_webhook_events"):
        total += await count_rows(database_url, table, "status = 'pending'")
    return total


async def true_lag(nats_url: str) -> dict[str, int]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        infos = [await js.consumer_info(spec.stream, spec.durable) for spec in CONSUMERS]
        return {info.name: info.num_pending or 0 for info in infos}
    finally:
        await nc.close()


async def test_two_jobs_replicas_do_not_double_the_backlog_alert(
    base_env: dict[str, str], settings: Settings, clean_db: str, tmp_path: Path
) -> None:
    await record_texting_events(settings, clean_db, PENDING)
    pending, lag = await true_pending(clean_db), await true_lag(base_env["NATS_URL"])
    assert pending == PENDING and max(lag.values()) >= PENDING  # the sync durables have not read them
    env = {**base_env, "DFM_STATE_GAUGES_INTERVAL_S": "0.5"}
    with jobs_replicas(env, tmp_path, 2) as instances:
        async with httpx.AsyncClient(timeout=10) as client:

            async def both_exported() -> list[Sample]:
                samples = [s for i in instances for s in await scrape(client, i)]
                exporting = {s.labels["instance"] for s in samples if s.name == "dfm_events_pending"}
                lagging = {s.labels["instance"] for s in samples if s.name == "dfm_consumer_pending_messages"}
                return samples if exporting == lagging == set(instances) else []

            samples = await eventually(both_exported)
            for instance in instances:  # both replicas are ready consumers (GET /health)
                assert (await client.get(f"http://{instance}/health")).status_code == 200

        # the backlog alert sees the real number of pending events, not one per replica
        for rule in ("DfmPendingBacklogWarning", "DfmPendingBacklogCritical"):
            left, _ = alert_expression(rule)
            assert evaluate(left, samples) == [({}, PENDING)], rule
        assert evaluate('sum(dfm_events_pending{status="pending"})', samples) == [({}, 2 * PENDING)]  # the old rule

        # the dashboard's backlog and lag panels: the true figures per table and per durable
        [backlog] = dashboard_expressions("dfm_events_pending")
        by_table = {(v[0]["table"], v[0]["status"]): v[1] for v in evaluate(backlog, samples)}
        assert by_table[("texting", "pending")] == PENDING
        assert sum(v for (_, status), v in by_table.items() if status == "pending") == pending
        [lag_panel] = dashboard_expressions("dfm_consumer_pending_messages")
        assert {v[0]["consumer"]: v[1] for v in evaluate(lag_panel, samples)} == lag

        # the processing-delay alert: one age, the oldest
        left, _ = alert_expression("DfmProcessingDelay")
        [(_, age)] = evaluate(left, samples)
        assert age > 0


# --- the ingress with several worker processes --------------------------------------------------
def counts_by_worker(run_dir: Path) -> dict[int, float]:
    """Accepted webhooks per worker pid, read from each worker's own counter file."""
    counted: dict[int, float] = {}
    for path in run_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            for s in metric.samples:
                if s.name == "dfm_webhook_requests_total" and s.labels.get("outcome") == "accepted":
                    counted[pid] = counted.get(pid, 0) + s.value
    return counted


async def accepted_total(client: httpx.AsyncClient, metrics: str) -> float:
    text = (await client.get(f"{metrics}/metrics")).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dfm_webhook_requests_total" and s.labels.get("outcome") == "accepted"
    )


async def test_two_ingress_workers_export_counters_that_add_up_to_the_requests(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    files = tmp_path / "metrics"
    files.mkdir()
    metrics = f"http://127.0.0.1:{free_port()}"
    env = {
        **base_env,
        "DFM_INGRESS_WORKERS": "2",
        "METRICS_PORT": metrics.rsplit(":", 1)[1],
        "DFM_METRICS_MULTIPROC_DIR": str(files),
    }
    sent = 0
    with http_service("ingress", env, "INGRESS_PORT", "/api/health", tmp_path / "ingress.log") as (base, _):
        [run_dir] = list(files.iterdir())  # a fresh directory for this start
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection per request: both workers accept
        async with (
            httpx.AsyncClient(base_url=base, timeout=10, limits=fresh) as ingress,
            httpx.AsyncClient(timeout=10) as scraper,
        ):

            async def send(n: int) -> None:
                body = {
                    "eventType": "message.received",
                    "messageId": f"workers-{uuid.uuid4().hex}-{n}",
                    "from": "+15555550101",
                    "to": "+15555550100",
                    "body": "hi",
                    "timestamp": "2026-01-01T00:00:00Z",
                }
                answer = await ingress.post(
                    "/api/webhooks/texting", json=body, headers={"X-Texting-Secret": TEXTING_SECRET}
                )
                assert answer.status_code == 200, answer.text

            while len([c for c in counts_by_worker(run_dir).values() if c]) < 2:
                assert sent < 2000, counts_by_worker(run_dir)
                await asyncio.gather(*(send(sent + i) for i in range(20)))
                sent += 20
            assert await accepted_total(scraper, metrics) == sent == sum(counts_by_worker(run_dir).values())

            # a worker killed: uvicorn starts another; the dead one's counts stay (a counter
            # never goes back), its live gauges are gone at the next scrape
            victim = next(iter(counts_by_worker(run_dir)))
            assert list(run_dir.glob(f"gauge_live*_{victim}.db"))
            os.kill(victim, signal.SIGKILL)

            async def replaced() -> bool:
                return len({int(p.stem.rsplit("_", 1)[1]) for p in run_dir.glob("counter_*.db")}) == 3

            await eventually(replaced, timeout=30)
            await send(sent)
            sent += 1
            assert await accepted_total(scraper, metrics) == sent
            assert not list(run_dir.glob(f"gauge_live*_{victim}.db"))
    assert not run_dir.exists()  # removed when the ingress stops
