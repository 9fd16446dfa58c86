"""``dfm run gateway``: uvicorn serving the Verity API gateway on ``GATEWAY_PORT``."""

from __future__ import annotations

import uvicorn

from services.common.settings import Settings
from services.gateway.app import create_app


def run(settings: Settings, *, host: str = "0.0.0.0") -> None:
    """Serve until SIGTERM; uvicorn finishes in-flight requests before exiting."""
    uvicorn.run(create_app(settings), host=host, port=settings.gateway_port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=30)
