"""``dfm run jobs``: the jobs consumer (commands + dead-letter advisories)."""

from __future__ import annotations

import asyncio
import contextlib

from contracts.streams import JOBS_CONSUMER
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.infra.broker import connect
from services.infra.db.session import create_engine
from services.infra.logging import get_logger
from services.infra.metrics_server import serve_metrics
from services.infra.settings import Settings
from services.infra.stream_app import serve_until_terminated
from services.jobs.service import Jobs

log = get_logger(__name__)
WORKERS = 2  # a long replay does not hold up the next sweep


async def serve(settings: Settings) -> None:
    """Consume commands until SIGTERM/SIGINT."""
    engine = create_engine(settings)
    ghl = None
    if settings.ghl_api_key and settings.ghl_location_id:
        ghl = GhlClient.from_settings(settings, RateBudget.for_ghl(engine, settings).acquire)
    nc = await connect(settings, name="dfm-jobs")
    jobs = Jobs(settings, engine, nc, ghl)
    serve_metrics(settings, "jobs")
    try:
        await jobs.start_advisories()
        await serve_until_terminated(settings, JOBS_CONSUMER, jobs.handle, WORKERS)
    finally:
        await jobs.close()
        with contextlib.suppress(Exception):
            await nc.drain()
        if ghl is not None:
            await ghl.aclose()
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
