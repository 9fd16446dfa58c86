"""``dfm run aloware-sync``."""

from __future__ import annotations

import asyncio

from contracts.streams import ALOWARE_SYNC
from services.aloware_sync.service import AlowareSync
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.infra.db.session import create_engine
from services.infra.delivery import EventConsumer, consumer_batch
from services.infra.metrics_server import serve_metrics
from services.infra.settings import Settings
from services.infra.stream_app import serve_until_terminated


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT."""
    serve_metrics(settings, "aloware-sync")
    engine = create_engine(settings)
    ghl = GhlClient.from_settings(settings, RateBudget.for_ghl(engine, settings).acquire)
    aloware = AlowareClient.from_settings(settings)
    consumer = EventConsumer(settings, ALOWARE_SYNC, engine,
                             AlowareSync(settings, engine, ghl, aloware).handle)
    try:
        await serve_until_terminated(settings, ALOWARE_SYNC, consumer.handle, consumer_batch(settings))
    finally:
        await ghl.aclose()
        await aloware.aclose()
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
