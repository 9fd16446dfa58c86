"""``dfm run gateway``: uvicorn serving the Verity API gateway on ``GATEWAY_PORT``."""

from __future__ import annotations

import uvicorn

from services.gateway.app import create_app
from services.infra.settings import Settings


def run(settings: Settings, *, host: str = "0.0.0.0") -> None:
    """Serve until SIGTERM; uvicorn finishes in-flight requests before exiting.

    ``proxy_headers=False``: uvicorn would otherwise take ``X-Forwarded-For`` as the client's
    address from any peer in ``FORWARDED_ALLOW_IPS`` (127.0.0.1 by default, so from anything on
    the pod's loopback); the rate limits read it only from ``GATEWAY_TRUSTED_PROXIES``."""
    uvicorn.run(
        create_app(settings),
        host=host,
        port=settings.gateway_port,
        log_level="warning",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        proxy_headers=False,
    )
