"""``dfm run jobs``: the jobs consumer (commands + dead-letter advisories)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack

from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.streams import JOBS_CONSUMER
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.infra.broker import connect
from services.infra.db.session import create_engine
from services.infra.logging import get_logger
from services.infra.metrics_server import serve_metrics
from services.infra.runtime import run_service
from services.infra.settings import Settings
from services.infra.stream_app import serve_until_terminated
from services.jobs.alerts import StateGauges
from services.jobs.replay import Explainer
from services.jobs.service import Jobs

log = get_logger(__name__)
ExplainerFactory = Callable[[Settings, AsyncEngine], Explainer]
WORKERS = 2  # a long replay does not hold up the next sweep


async def serve(settings: Settings, explainer: ExplainerFactory | None = None) -> None:
    """Consume commands until SIGTERM/SIGINT; resources close in reverse order of opening.
    ``explainer`` gives dry-run replays the sync services' plans (``dfm run jobs`` passes it:
    this package may not import them)."""
    async with AsyncExitStack() as stack:
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        ghl = aloware = None
        if settings.ghl_api_key and settings.ghl_location_id:
            budget = RateBudget.for_ghl(engine, settings)
            ghl = GhlClient.from_settings(settings, budget.acquire, budget.observe)
            stack.push_async_callback(ghl.aclose)
        if settings.aloware_api_token:  # the call-list commands (seed, rebuild) write into Aloware
            aloware = AlowareClient.from_settings(settings)
            stack.push_async_callback(aloware.aclose)
        nc = await connect(settings, name="dfm-jobs")
        stack.push_async_callback(_drain, nc)
        jobs = Jobs(settings, engine, nc, ghl, aloware, explainer(settings, engine) if explainer else None)
        stack.push_async_callback(jobs.close)
        serve_metrics(settings, "jobs")
        # every replica exports the whole database's and stream's figures, fresh (alerts.py)
        gauges = StateGauges(engine, settings.dfm_state_gauges_interval_s, jobs.refresh_consumer_gauges)
        await stack.enter_async_context(gauges.running())
        await jobs.start_advisories()
        await serve_until_terminated(settings, JOBS_CONSUMER, jobs.handle, WORKERS)


async def _drain(nc: NatsClient) -> None:
    with contextlib.suppress(Exception):  # a connection already lost has nothing to drain
        await nc.drain()


def run(settings: Settings, explainer: ExplainerFactory | None = None) -> None:
    run_service(serve(settings, explainer))
