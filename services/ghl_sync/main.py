"""``dfm run ghl-sync``."""

from __future__ import annotations

import asyncio

from contracts.streams import GHL_SYNC
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.ghl_oauth import GhlOAuth
from services.ghl_sync.service import GhlSync
from services.infra.db.session import create_engine
from services.infra.delivery import EventConsumer, consumer_batch
from services.infra.metrics_server import serve_metrics
from services.infra.settings import Settings
from services.infra.stream_app import serve_until_terminated


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT."""
    serve_metrics(settings, "ghl-sync")
    engine = create_engine(settings)
    ghl = GhlClient.from_settings(settings, RateBudget.for_ghl(engine, settings).acquire)
    aloware = AlowareClient.from_settings(settings) if settings.aloware_api_token else None
    oauth = GhlOAuth(settings, engine)
    conversations = GhlConversations(settings, oauth, acquire=RateBudget.for_ghl(engine, settings).acquire)
    sync = GhlSync(settings, engine, ghl, aloware, conversations)
    consumer = EventConsumer(settings, GHL_SYNC, engine, sync.handle)
    try:
        await serve_until_terminated(settings, GHL_SYNC, consumer.handle, consumer_batch(settings))
    finally:
        await sync.aclose()
        await ghl.aclose()
        await conversations.aclose()
        await oauth.aclose()
        if aloware is not None:
            await aloware.aclose()
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
