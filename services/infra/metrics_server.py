"""Prometheus ``/metrics`` and the consumers' health probes on ``METRICS_PORT`` (0 disables),
for processes without an HTTP app of their own (the consumers, jobs, scheduler) and for the
ingress in production, whose public port must not show them (security-audit F21; in
development the ingress keeps ``/metrics`` on its own port). The gateway serves ``/metrics``
on its own port.

``GET /health/live`` answers 200 while the process answers (the liveness probe: a restart
helps nothing else). ``GET /health`` is readiness, 200 or 503 with the checks by name:

- ``nats``: the consumer's connection is up;
- ``fetch_loop``: a handler slot is free, so the loop is fetching or waiting for messages, or
  a message was started or finished within ``DFM_HEALTH_STALL_S`` (every slot held that long
  by a handler that does not come back is a wedged loop: it fetches nothing more);
- ``postgres``: ``SELECT 1`` answered, asked at most every ``PING_EVERY_S``;
- ``draining``: present while the consumer stops (SIGTERM), and then never ready.

The checks run on the consumer's event loop, so a blocked loop does not answer within
``PROBE_TIMEOUT_S`` and is not ready either. The consumer fronts (``stream_app.py``,
``consumer.py``) record their fetch loop's progress in ``PROCESS_HEALTH``, the process's one
health registry, as prometheus_client's ``REGISTRY`` is its one metrics registry. A process
that runs no consumer (the scheduler, the ingress) has no checks and is ready.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import asyncpg
from prometheus_client import REGISTRY, CollectorRegistry, Info, make_wsgi_app

from contracts.streams import CONSUMERS
from services.infra.db.session import sync_url
from services.infra.logging import get_logger
from services.infra.settings import Settings

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["PROCESS", "PROCESS_HEALTH", "FetchLoop", "ProcessHealth", "serve_metrics"]

log = get_logger(__name__)
PROCESS = Info("dfm_process", "Which DF-Middleware service this process runs")
CONSUMER_SERVICES = frozenset(spec.owner for spec in CONSUMERS)  # `dfm run <service>`; lanes count as their service
PING_EVERY_S = 5.0  # PostgreSQL is asked at most this often; answers in between are the last one
PING_TIMEOUT_S = 2.0
NATS_TIMEOUT_S = 0.2
PROBE_TIMEOUT_S = 3.0  # > PING_TIMEOUT_S + NATS_TIMEOUT_S: a slow answer is a real answer
OK = "ok"


class FetchLoop:
    """How far one consumer's fetch loop has come: ``capacity`` handler slots (messages, or
    batches, handled at once), how many are busy, and when a handler last started or finished.
    The front wraps every handler run in ``handling()``; readiness reads ``check()``."""

    def __init__(self, durable: str, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.durable = durable
        self.capacity = max(1, capacity)
        self.connected: Callable[[], Awaitable[bool]] | None = None  # set by ProcessHealth.watch
        self.draining = False
        self._clock = clock
        self._busy = 0
        self._moved_at = clock()

    @contextmanager
    def handling(self) -> Iterator[None]:
        """Around one handler run: a slot busy, and progress when it starts and ends."""
        self._busy += 1
        self._moved_at = self._clock()
        try:
            yield
        finally:
            self._busy -= 1
            self._moved_at = self._clock()

    def drain(self) -> None:
        """The consumer stops: no more fetches, the messages in hand finish."""
        self.draining = True

    def check(self, stall_s: float) -> str:
        """``ok``, or why the loop is not taking messages."""
        if self._busy < self.capacity:
            return OK  # a slot is free: the loop is fetching or waiting for messages
        still = self._clock() - self._moved_at
        if still <= stall_s:
            return OK
        return f"stalled: {self._busy} of {self.capacity} handlers busy, nothing started or finished for {still:.0f} s"


class ProcessHealth:
    """Readiness of the consumers in this process (usually one), answered from any thread."""

    def __init__(self, probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._probe_timeout_s = probe_timeout_s
        self._loops: weakref.WeakSet[FetchLoop] = weakref.WeakSet()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._expects_consumer = False
        self._database_url: str | None = None
        self._stall_s = 180.0
        self._postgres_answered_at = -math.inf
        self._postgres = OK

    def expect_consumer(self) -> None:
        """This process runs a consumer: not ready before its fetch loop is watched."""
        self._expects_consumer = True

    def watch(self, settings: Settings, loop: FetchLoop, connected: Callable[[], Awaitable[bool]]) -> None:
        """Include ``loop``, whose connection answers ``connected()`` (called by the consumer
        front on its event loop once it consumes)."""
        loop.connected = connected
        self._loops.add(loop)
        self._event_loop = asyncio.get_running_loop()
        self._database_url = settings.database_url
        self._stall_s = settings.dfm_health_stall_s

    def forget(self, loop: FetchLoop) -> None:
        """Leave ``loop`` out (its consumer has stopped)."""
        self._loops.discard(loop)

    def probe(self) -> tuple[int, dict[str, Any]]:
        """The readiness answer: HTTP status and body. Safe to call from any thread."""
        loop = self._event_loop
        if loop is None or not self._loops:
            checks = {"fetch_loop": "starting"} if self._expects_consumer else {}
        else:
            try:
                future = asyncio.run_coroutine_threadsafe(self.checks(), loop)
                checks = future.result(timeout=self._probe_timeout_s)
            except TimeoutError:
                future.cancel()
                checks = {"event_loop": f"no answer within {self._probe_timeout_s:g} s"}
            except RuntimeError:  # the loop is closed: the process is ending
                checks = {"event_loop": "closed"}
        ready = all(value == OK for value in checks.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not ready", "checks": checks}

    async def checks(self) -> dict[str, str]:
        """Every check by name (run on the consumers' event loop)."""
        loops = list(self._loops)
        connected = [loop.connected is None or await loop.connected() for loop in loops]
        stalls = [r for r in (loop.check(self._stall_s) for loop in loops) if r != OK]
        checks = {
            "nats": OK if all(connected) else "disconnected",
            "fetch_loop": stalls[0] if stalls else OK,
            "postgres": await self._ping_postgres(),
        }
        if any(loop.draining for loop in loops):
            checks["draining"] = "stopping: finishing the messages in hand"
        return checks

    async def _ping_postgres(self) -> str:
        if self._database_url is None:
            return OK  # nothing to ask
        now = time.monotonic()
        if now - self._postgres_answered_at < PING_EVERY_S:
            return self._postgres
        self._postgres_answered_at = now
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                conn = await asyncpg.connect(sync_url(self._database_url), timeout=PING_TIMEOUT_S)
                try:
                    await conn.fetchval("SELECT 1")
                finally:
                    await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._postgres = f"no answer: {type(exc).__name__}"
        else:
            self._postgres = OK
        return self._postgres


PROCESS_HEALTH = ProcessHealth()


def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> Iterable[bytes]:
    payload = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


def metrics_app(registry: CollectorRegistry = REGISTRY, health: ProcessHealth = PROCESS_HEALTH) -> WSGIApplication:
    """The metrics port's WSGI app: the two probes, and the metrics on every other path (as
    prometheus_client's own server does)."""
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/health/live":
            return _json(start_response, 200, {"status": "live"})
        if path == "/health":
            return _json(start_response, *health.probe())
        answer: Iterable[bytes] = metrics(environ, start_response)
        return answer

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress does not hold the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: probes and scrapes come every few seconds."""


def serve_metrics(settings: Settings, service: str, registry: CollectorRegistry = REGISTRY) -> int | None:
    """Start the metrics port in a background thread; the port, or None when disabled or
    taken (a warning, never a crash: metrics must not stop the work)."""
    PROCESS.info({"service": service})
    if service in CONSUMER_SERVICES:
        PROCESS_HEALTH.expect_consumer()
    if not settings.metrics_port:
        return None
    try:
        server = make_server(
            "0.0.0.0",
            settings.metrics_port,
            metrics_app(registry),  # inside the cluster (NetworkPolicy)
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        log.warning("metrics_port_unavailable", port=settings.metrics_port, error=str(exc))
        return None
    threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True).start()
    log.info("metrics_serving", port=settings.metrics_port, service=service)
    return settings.metrics_port
