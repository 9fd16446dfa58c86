"""``dfm run console``: uvicorn serving the console on ``CONSOLE_HOST:CONSOLE_PORT``."""

from __future__ import annotations

import uvicorn

from services.console.app import create_console_app
from services.infra.settings import Settings


def run(settings: Settings) -> None:
    """Serve until SIGTERM. Loopback by default; an unsafe production configuration stops here
    with one line (``Settings.refuse_insecure_console``). ``proxy_headers=False``: the sign-in
    throttle reads ``X-Forwarded-For`` only from ``CONSOLE_TRUSTED_PROXIES``."""
    app = create_console_app(settings)
    uvicorn.run(
        app,
        host=settings.console_host,
        port=settings.console_port,
        log_level="warning",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=False,
    )
