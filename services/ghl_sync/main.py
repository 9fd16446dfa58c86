"""``dfm run ghl-sync``."""

from __future__ import annotations

import asyncio

from contracts.streams import GHL_SYNC
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.common.db.session import create_engine
from services.common.delivery import EventConsumer, consumer_batch
from services.common.runtime import on_termination
from services.common.stream_app import start_sync_broker
from services.common.settings import Settings
from services.ghl_sync.service import GhlSync


def ghl_client(settings: Settings, budget: RateBudget) -> GhlClient:
    """The GHL client of this process, drawing from the shared per-location budget."""
    assert settings.ghl_api_key is not None and settings.ghl_location_id is not None
    return GhlClient(settings.ghl_base_url, settings.ghl_api_key.get_secret_value(),
                     settings.ghl_location_id, acquire=budget.acquire)


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT; the batch in hand finishes and is acked."""
    engine = create_engine(settings)
    budget = RateBudget(engine, f"ghl:{settings.ghl_location_id}", settings.ghl_rate_limit_per_10s)
    ghl = ghl_client(settings, budget)
    consumer = EventConsumer(settings, GHL_SYNC, engine, GhlSync(settings, engine, ghl).handle)
    stop = asyncio.Event()
    on_termination(asyncio.get_running_loop(), stop.set)
    broker = await start_sync_broker(settings, GHL_SYNC, consumer.handle, consumer_batch(settings))
    try:
        await stop.wait()
    finally:
        await broker.stop()
        await ghl.aclose()
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
