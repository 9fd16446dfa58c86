"""``dfm run scheduler``."""

from __future__ import annotations

import asyncio
import contextlib

from services.infra.broker import connect, prepare_topology
from services.infra.metrics_server import serve_metrics
from services.infra.runtime import on_termination, run_service
from services.infra.settings import Settings
from services.scheduler.service import CommandScheduler


async def serve(settings: Settings) -> None:
    """Publish scheduled commands until SIGTERM/SIGINT."""
    serve_metrics(settings, "scheduler")
    await prepare_topology(settings)
    nc = await connect(settings, name="dfm-scheduler")
    scheduler = CommandScheduler(settings, nc.jetstream())
    stop = asyncio.Event()
    on_termination(asyncio.get_running_loop(), stop.set)
    scheduler.start()
    try:
        await stop.wait()
    finally:
        scheduler.shutdown()
        with contextlib.suppress(Exception):
            await nc.drain()


def run(settings: Settings) -> None:
    run_service(serve(settings))
