"""``dfm run ingress``: uvicorn (uvloop + httptools) serving the ingress app."""

from __future__ import annotations

import gc

import uvicorn

from services.common.settings import Settings, load_settings
from services.ingress.app import WebhookFastPath, create_asgi


def tune_gc() -> None:
    """Fewer, cheaper collections: the ingress allocates many short-lived objects per request
    and little that lives long, so the default gen-0 threshold (700) only adds tail latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def app_factory() -> WebhookFastPath:
    """Build the app in each worker process from the environment (``--workers`` > 1)."""
    tune_gc()
    return create_asgi(load_settings())


def run(settings: Settings, *, host: str = "0.0.0.0") -> None:
    """Serve until SIGTERM; uvicorn finishes in-flight requests before exiting."""
    options = {
        "host": host,
        "port": settings.ingress_port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 20,
        "backlog": 2048,
    }
    if settings.dfm_ingress_workers > 1:
        uvicorn.run(
            "services.ingress.main:app_factory", factory=True,
            workers=settings.dfm_ingress_workers, **options,  # type: ignore[arg-type]
        )
    else:
        tune_gc()
        uvicorn.run(create_asgi(settings), **options)  # type: ignore[arg-type]
