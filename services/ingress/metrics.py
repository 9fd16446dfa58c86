"""Prometheus metrics of the ingress (spec/inbound.md §7.2), and prometheus_client's
multiprocess mode for ``DFM_INGRESS_WORKERS`` > 1.

With several uvicorn workers every worker counts its own requests; a scrape answered by one
of them would show a part. In multiprocess mode (``worker_metrics``) each worker writes its
values to files in a directory made fresh at every start, and the parent process serves one
exposition over all of them: counters and histograms add up across workers, and a worker
that died keeps its counts (a counter never goes back) while its live gauges are dropped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from services.infra.metrics_server import PROCESS
from services.infra.settings import Settings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter("dfm_webhook_requests_total", "Webhook requests by source and outcome", ["source", "outcome"])
REQUEST_DURATION = Histogram(
    "dfm_webhook_request_duration_seconds",
    "Webhook request latency",
    ["source", "outcome"],
    buckets=LATENCY_BUCKETS,
)
AUTH_FAILURES = Counter("dfm_webhook_auth_failures_total", "Webhook authentication failures", ["source", "reason"])
PUBLISH_DURATION = Histogram(
    "dfm_webhook_publish_duration_seconds",
    "Time to a JetStream PubAck (or the outbox insert)",
    buckets=LATENCY_BUCKETS,
)
# read from the whole outbox table by every ingress process: the same value in each, so rules
# and dashboards take their max (in multiprocess mode, the max over the live workers)
OUTBOX_DEPTH = Gauge(
    "dfm_ingress_outbox_depth",
    "Events in the outbox not yet on the stream (every ingress process: use max)",
    multiprocess_mode="livemax",
)
OUTBOX_FAILED = Gauge(
    "dfm_ingress_outbox_failed",
    "Outbox rows the stream refused for good (every ingress process: use max)",
    multiprocess_mode="livemax",
)
REPLICATED_GAUGES = ("dfm_ingress_outbox_depth", "dfm_ingress_outbox_failed")
OUTBOX_WRITES = Counter("dfm_ingress_outbox_writes_total", "Events written to the outbox because NATS did not ack")
READINESS_PROBES = Counter(
    "dfm_ingress_readiness_probes_total",
    "Readiness probes run against PostgreSQL and JetStream (answers in between are cached)",
)

# prometheus_client's own variable: its workers read it when they import prometheus_client
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LIVE_GAUGE_FILES = "gauge_live*_*.db"


class WorkerFiles:
    """Collector of every worker's metric files in ``path``; the live gauges of workers that
    are gone (a crash, or uvicorn replacing a worker) are dropped before each collection."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._files = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        forget_dead_workers(self._path)
        metrics: Iterable[Metric] = self._files.collect()  # type: ignore[no-untyped-call]
        return metrics


def forget_dead_workers(path: str) -> None:
    """``mark_process_dead`` for every process with live gauge files that no longer runs."""
    pids = {
        int(os.path.basename(f).rsplit("_", 1)[1].removesuffix(".db"))
        for f in glob.glob(os.path.join(path, LIVE_GAUGE_FILES))
    }
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:  # another user's process: alive
            continue


@contextlib.contextmanager
def worker_metrics(settings: Settings) -> Iterator[CollectorRegistry]:
    """Multiprocess mode for the workers this process is about to start: a fresh directory in
    ``DFM_METRICS_MULTIPROC_DIR`` (a new start must not add the last run's counts), named in
    ``PROMETHEUS_MULTIPROC_DIR`` for the workers it spawns, and the registry that reads all of
    their files (plus ``dfm_process_info``). The directory is removed at exit."""
    path = tempfile.mkdtemp(prefix="dfm-ingress-metrics-", dir=settings.dfm_metrics_multiproc_dir)
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path  # not configuration: how the library tells the workers
    registry = CollectorRegistry()
    registry.register(WorkerFiles(path))
    registry.register(PROCESS)
    try:
        yield registry
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)
