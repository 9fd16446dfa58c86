"""``dfm run aloware-sync``: the composition root (engine, clients, the rule, the consumer)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from contracts.streams import ALOWARE_SYNC
from services.aloware_sync.service import AlowareSync
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.infra.db.session import create_engine
from services.infra.delivery import EventConsumer, consumer_batch
from services.infra.metrics_server import serve_metrics
from services.infra.runtime import run_service
from services.infra.settings import Settings
from services.infra.stream_app import serve_until_terminated


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT; every resource is released in reverse order of making."""
    serve_metrics(settings, "aloware-sync")
    async with AsyncExitStack() as resources:
        engine = create_engine(settings)
        resources.push_async_callback(engine.dispose)
        budget = RateBudget.for_ghl(engine, settings)
        ghl = GhlClient.from_settings(settings, budget.acquire, budget.observe)
        resources.push_async_callback(ghl.aclose)
        aloware = AlowareClient.from_settings(settings)
        resources.push_async_callback(aloware.aclose)
        consumer = EventConsumer(settings, ALOWARE_SYNC, engine, AlowareSync(settings, engine, ghl, aloware).handle)
        await serve_until_terminated(settings, ALOWARE_SYNC, consumer.handle, consumer_batch(settings))


def run(settings: Settings) -> None:
    run_service(serve(settings))
