"""``dfm run verity-sync``."""

from __future__ import annotations

import asyncio

from contracts.streams import VERITY_SYNC
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.ghl_oauth import GhlOAuth
from services.infra.db.session import create_engine
from services.infra.delivery import EventConsumer, consumer_batch
from services.infra.metrics_server import serve_metrics
from services.infra.settings import Settings
from services.infra.stream_app import serve_until_terminated
from services.verity_sync.service import VeritySync


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT."""
    serve_metrics(settings, "verity-sync")
    engine = create_engine(settings)
    oauth = GhlOAuth(settings, engine)
    conversations = (GhlConversations(settings, oauth, acquire=RateBudget.for_ghl(engine, settings).acquire)
                     if settings.ghl_location_id else None)
    ghl = (GhlClient.from_settings(settings, RateBudget.for_ghl(engine, settings).acquire)
           if settings.ghl_api_key and settings.ghl_location_id else None)
    sync = VeritySync(settings, engine, conversations, ghl=ghl)
    consumer = EventConsumer(settings, VERITY_SYNC, engine, sync.handle)
    try:
        await serve_until_terminated(settings, VERITY_SYNC, consumer.handle, consumer_batch(settings))
    finally:
        await sync.aclose()
        if ghl is not None:
            await ghl.aclose()
        if conversations is not None:
            await conversations.aclose()
        await oauth.aclose()
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
