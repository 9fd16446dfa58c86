"""``dfm run ingress``: uvicorn (uvloop + httptools) serving the ingress app."""

from __future__ import annotations

import uvicorn

from services.common.settings import Settings
from services.ingress.app import create_app


def run(settings: Settings, *, host: str = "0.0.0.0") -> None:
    """Serve until SIGTERM; uvicorn finishes in-flight requests before exiting."""
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=settings.ingress_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=20,
        limit_concurrency=2000,
        backlog=2048,
    )
