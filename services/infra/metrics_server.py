"""Prometheus ``/metrics`` on ``METRICS_PORT`` (0 disables) for processes without an HTTP app
of their own (the consumers, jobs, scheduler) and for the ingress in production, whose public
port must not show it (security-audit F21; in development the ingress keeps ``/metrics`` on
its own port). The gateway serves ``/metrics`` on its own port."""

from __future__ import annotations

from prometheus_client import Info, start_http_server

from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)
PROCESS = Info("dfm_process", "Which DF-Middleware service this process runs")


def serve_metrics(settings: Settings, service: str) -> int | None:
    """Start the metrics endpoint in a background thread; the port, or None when disabled or
    taken (a warning, never a crash: metrics must not stop the work)."""
    PROCESS.info({"service": service})
    if not settings.metrics_port:
        return None
    try:
        start_http_server(settings.metrics_port)
    except OSError as exc:
        log.warning("metrics_port_unavailable", port=settings.metrics_port, error=str(exc))
        return None
    log.info("metrics_serving", port=settings.metrics_port, service=service)
    return settings.metrics_port
