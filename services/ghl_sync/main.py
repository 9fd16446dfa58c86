"""``dfm run ghl-sync``: the composition root. Every resource is entered into one
``AsyncExitStack``, so they close in reverse order of opening however serving ends."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

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
    async with AsyncExitStack() as stack:
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        aloware = None  # without a token CL-1 uses the call's own data
        if settings.aloware_api_token:
            aloware = AlowareClient.from_settings(settings)
            stack.push_async_callback(aloware.aclose)
        oauth = GhlOAuth(settings, engine)
        stack.push_async_callback(oauth.aclose)
        conversations = GhlConversations(settings, oauth, acquire=RateBudget.for_ghl(engine, settings).acquire)
        stack.push_async_callback(conversations.aclose)
        ghl = GhlClient.from_settings(settings, RateBudget.for_ghl(engine, settings).acquire)
        stack.push_async_callback(ghl.aclose)
        sync = GhlSync(settings, engine, ghl, aloware, conversations)
        stack.push_async_callback(sync.aclose)
        consumer = EventConsumer(settings, GHL_SYNC, engine, sync.handle)
        await serve_until_terminated(settings, GHL_SYNC, consumer.handle, consumer_batch(settings))


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
