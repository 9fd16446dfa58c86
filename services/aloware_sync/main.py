"""``dfm run aloware-sync``."""

from __future__ import annotations

import asyncio

from contracts.streams import ALOWARE_SYNC
from services.aloware_sync.service import AlowareSync
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.common.db.session import create_engine
from services.common.delivery import EventConsumer, consumer_batch
from services.common.runtime import on_termination
from services.common.stream_app import start_sync_broker
from services.common.settings import Settings


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT; the batch in hand finishes and is acked."""
    assert settings.ghl_api_key and settings.ghl_location_id and settings.aloware_api_token
    engine = create_engine(settings)
    budget = RateBudget(engine, f"ghl:{settings.ghl_location_id}", settings.ghl_rate_limit_per_10s)
    ghl = GhlClient(settings.ghl_base_url, settings.ghl_api_key.get_secret_value(),
                    settings.ghl_location_id, acquire=budget.acquire)
    aloware = AlowareClient(settings.aloware_base_url, settings.aloware_api_token.get_secret_value(),
                            max_rps=settings.aloware_max_rps)
    rules = AlowareSync(settings, engine, ghl, aloware)
    consumer = EventConsumer(settings, ALOWARE_SYNC, engine, rules.handle)
    stop = asyncio.Event()
    on_termination(asyncio.get_running_loop(), stop.set)
    broker = await start_sync_broker(settings, ALOWARE_SYNC, consumer.handle, consumer_batch(settings))
    try:
        await stop.wait()
    finally:
        await broker.stop()
        await ghl.aclose()
        await aloware.aclose()
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
