"""The jobs service in the test process: a real FastStream consumer on the ``jobs`` durable,
the dead-letter advisory listener, and its own database pool and NATS connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from contracts.streams import JOBS_CONSUMER
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.infra.broker import connect, prepare_topology
from services.infra.db.session import create_engine, sync_url
from services.infra.settings import Settings
from services.infra.stream_app import start_sync_broker
from services.jobs.service import Jobs


@asynccontextmanager
async def running_jobs(settings: Settings, *, consume: bool = True) -> AsyncIterator[Jobs]:
    await prepare_topology(settings)
    engine = create_engine(settings)
    nc = await connect(settings, name="dfm-jobs")  # the jobs identity, as `dfm run jobs`
    budget = RateBudget.for_ghl(engine, settings)
    ghl = (
        GhlClient.from_settings(settings, budget.acquire, budget.observe)
        if settings.ghl_api_key and settings.ghl_location_id
        else None
    )
    jobs = Jobs(settings, engine, nc, ghl)
    await jobs.start_advisories()
    broker = await start_sync_broker(settings, JOBS_CONSUMER, jobs.handle, 2) if consume else None
    try:
        yield jobs
    finally:
        if broker is not None:
            await broker.stop()
        await jobs.close()
        await nc.drain()
        if ghl is not None:
            await ghl.aclose()
        await engine.dispose()


async def fetch(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def execute(database_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()
