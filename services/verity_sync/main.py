"""``dfm run verity-sync``: the composition root. Every resource is entered into one
``AsyncExitStack`` as it is made, so it is closed, in reverse order, however start-up or
consumption ends."""

from __future__ import annotations

from contextlib import AsyncExitStack

from contracts.streams import VERITY_SYNC
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.ghl_oauth import GhlOAuth
from services.infra.db.session import create_engine
from services.infra.delivery import EventConsumer, consumer_batch
from services.infra.metrics_server import serve_metrics
from services.infra.runtime import run_service
from services.infra.settings import Settings
from services.infra.stream_app import serve_until_terminated
from services.verity_sync.service import VeritySync


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT."""
    serve_metrics(settings, "verity-sync")
    async with AsyncExitStack() as stack:
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        oauth = GhlOAuth(settings, engine)
        stack.push_async_callback(oauth.aclose)
        budget = RateBudget.for_ghl(engine, settings)  # one per process: it learns from every answer
        conversations = None
        if settings.ghl_location_id:
            conversations = GhlConversations(settings, oauth, acquire=budget.acquire, observe=budget.observe)
            stack.push_async_callback(conversations.aclose)
        ghl = None
        if settings.ghl_api_key and settings.ghl_location_id:
            ghl = GhlClient.from_settings(settings, budget.acquire, budget.observe)
            stack.push_async_callback(ghl.aclose)
        sync = VeritySync(settings, engine, conversations, ghl=ghl)
        stack.push_async_callback(sync.aclose)
        consumer = EventConsumer(settings, VERITY_SYNC, engine, sync.handle)
        await serve_until_terminated(settings, VERITY_SYNC, consumer.handle, consumer_batch(settings))


def run(settings: Settings) -> None:
    run_service(serve(settings))
