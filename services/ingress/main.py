"""``dfm run ingress``: uvicorn (uvloop + httptools) serving the ingress app."""

from __future__ import annotations

import asyncio
import gc
from types import FrameType

import uvicorn

from services.infra.logging import configure_logging
from services.infra.metrics_server import serve_metrics
from services.infra.settings import Settings, load_settings
from services.ingress.app import WebhookFastPath, create_asgi
from services.ingress.metrics import worker_metrics


def tune_gc() -> None:
    """Fewer, cheaper collections: the ingress allocates many short-lived objects per request
    and little that lives long, so the default gen-0 threshold (700) only adds tail latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def serve_production_metrics(settings: Settings) -> None:
    """Production: ``/metrics`` on ``METRICS_PORT``, which stays inside the cluster, and not
    on the public webhook port (security-audit F21). With several workers the parent process
    serves them instead (``run``)."""
    if settings.node_env == "production":
        serve_metrics(settings, "ingress")


def app_factory() -> WebhookFastPath:
    """Build the app in each worker process from the environment (``--workers`` > 1); its
    metrics go to the multiprocess files the parent serves."""
    tune_gc()
    settings = load_settings()
    configure_logging("ingress", settings.log_level, settings.log_format)  # a spawned process
    return create_asgi(settings)


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on the first SIGTERM: readiness answers 503 for ``grace`` seconds
    while requests are still served (load balancers take that long to stop sending), then
    the normal graceful shutdown: no new connections, in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, app: WebhookFastPath, grace: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace = grace
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._grace <= 0:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self._draining = True
        self._app.app.state.ingress.draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(loop.call_later, self._grace, super().handle_exit, sig, frame)


def run(settings: Settings, *, host: str = "0.0.0.0") -> None:
    """Serve until SIGTERM, draining first (``DFM_DRAIN_GRACE_S``); in-flight requests finish."""
    options = {
        "host": host,
        "port": settings.ingress_port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_level": "warning",
        "log_config": None,  # its loggers propagate to the root handler of configure_logging
        "timeout_graceful_shutdown": int(settings.dfm_drain_timeout_s),
        "backlog": 2048,
        # connections plus requests in progress per process; beyond it uvicorn answers 503 at
        # once instead of buffering one more body of up to WEBHOOK_MAX_BODY_BYTES (F10)
        "limit_concurrency": settings.ingress_limit_concurrency,
    }
    if settings.dfm_ingress_workers > 1:
        # prometheus_client's multiprocess mode: the workers write their metrics to files and
        # this process serves all of them on METRICS_PORT (development too: the app's own
        # /metrics would show only the worker that answers)
        with worker_metrics(settings) as registry:
            serve_metrics(settings, "ingress", registry)
            uvicorn.run(
                "services.ingress.main:app_factory",
                factory=True,
                workers=settings.dfm_ingress_workers,
                **options,  # type: ignore[arg-type]
            )
    else:  # one process: the drain on SIGTERM (run one worker per pod and scale pods)
        tune_gc()
        serve_production_metrics(settings)
        app = create_asgi(settings)
        config = uvicorn.Config(app, **options)  # type: ignore[arg-type]
        DrainingServer(config, app, settings.dfm_drain_grace_s).run()
