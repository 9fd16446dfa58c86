"""``dfm run sandbox``: the fake vendors on ``SANDBOX_PORT``."""

from __future__ import annotations

import uvicorn

from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app


def run(settings: Settings, *, host: str = "127.0.0.1") -> None:
    uvicorn.run(
        create_sandbox_app(settings),
        host=host,
        port=settings.sandbox_port,
        log_level="warning",
        log_config=None,  # its loggers propagate to the root handler of configure_logging
        access_log=False,
    )
