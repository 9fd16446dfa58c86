"""``dfm run ghl-sync [--lane realtime|bulk|all]``: the composition root. Every resource is
entered into one ``AsyncExitStack``, so they close in reverse order of opening however serving
ends.

The process serves ghl-sync's lanes (issue #18): the real-time durable ``ghl-sync`` and the
bulk one ``ghl-sync-bulk``, each with its own fetch loop, so a contact import queued on the
bulk durable never stands in front of a call note or a STOP; each delivery runs in its lane
(``lane_scope``), which the GHL budget reads to serve real-time first. ``--lane`` lets an
operator scale one lane alone (more bulk replicas for an import, or a real-time replica that
never takes bulk work)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from contracts.lanes import LANES, Lane
from contracts.streams import ghl_sync_lanes
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.ghl_oauth import GhlOAuth
from services.ghl_sync.service import GhlSync
from services.infra.db.session import create_engine
from services.infra.delivery import EventConsumer, consumer_batch
from services.infra.metrics_server import serve_metrics
from services.infra.runtime import run_service
from services.infra.settings import Settings
from services.infra.stream_app import Subscription, serve_all_until_terminated


def lane_workers(batch: int, lanes: tuple[Lane, ...]) -> dict[Lane, int]:
    """The process's handlers (``consumer_batch``: what its database pool holds) shared by the
    lanes it serves: one lane gets them all; both share them, real-time getting the odd one,
    and each at least one."""
    if len(lanes) == 1:
        return {lanes[0]: batch}
    bulk = max(1, batch // 2)
    return {"realtime": max(1, batch - bulk), "bulk": bulk}


async def serve(settings: Settings, lanes: tuple[Lane, ...] = LANES) -> None:
    """Consume ``lanes`` (default both) until SIGTERM/SIGINT."""
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
        budget = RateBudget.for_ghl(engine, settings)  # one per process: it learns from every answer
        conversations = GhlConversations(settings, oauth, acquire=budget.acquire, observe=budget.observe)
        stack.push_async_callback(conversations.aclose)
        ghl = GhlClient.from_settings(settings, budget.acquire, budget.observe)
        stack.push_async_callback(ghl.aclose)
        sync = GhlSync(settings, engine, ghl, aloware, conversations)
        stack.push_async_callback(sync.aclose)
        specs = ghl_sync_lanes(settings.dfm_bulk_subjects)
        workers = lane_workers(consumer_batch(settings), lanes)
        subscriptions = [
            Subscription(specs[lane], EventConsumer(settings, specs[lane], engine, sync.handle).handle, workers[lane])
            for lane in lanes
        ]
        await serve_all_until_terminated(settings, subscriptions)


def run(settings: Settings, lanes: tuple[Lane, ...] = LANES) -> None:
    run_service(serve(settings, lanes))
