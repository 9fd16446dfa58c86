"""A whole pipeline in one test: sandbox vendors, ingress, recorder and N replicas of each
sync consumer, all on a private nats-server and a fresh database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from contracts.streams import ALOWARE_SYNC, GHL_SYNC, VERITY_SYNC, ghl_sync_lanes
from services.aloware_sync.service import AlowareSync
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.ghl_oauth import GhlOAuth
from services.ghl_sync.service import GhlSync
from services.infra.db.session import create_engine
from services.infra.delivery import EventConsumer, consumer_batch
from services.infra.settings import Settings
from services.infra.signing import generate_ed25519, private_pem
from services.infra.stream_app import start_sync_broker
from services.sandbox.app import create_sandbox_app
from services.tooling.embedded import free_port
from services.verity_sync.service import VeritySync
from tests.support.ingress_rig import running_ingress, running_recorder, serving


@dataclass
class Pipeline:
    settings: Settings
    ingress: httpx.AsyncClient
    sandbox: httpx.AsyncClient

    async def ghl_contacts(self) -> list[dict[str, Any]]:
        return (await self.sandbox.get("/_sandbox/ghl/contacts")).json()

    async def aloware_contacts(self) -> list[dict[str, Any]]:
        return (await self.sandbox.get("/_sandbox/aloware/contacts")).json()

    async def calls(self, vendor: str | None = None) -> list[dict[str, Any]]:
        params = {"vendor": vendor} if vendor else {}
        return (await self.sandbox.get("/_sandbox/calls", params=params)).json()

    async def webhooks(self) -> dict[str, Any]:
        """The webhooks the sandbox vendors sent: ``in_flight`` and every ``delivered`` one."""
        return (await self.sandbox.get("/_sandbox/webhooks")).json()


def pipeline_settings(base_env: dict[str, str], tmp: Path, **extra: str) -> Settings:
    key, _ = generate_ed25519()
    key_file = tmp / "ghl-signing.pem"
    key_file.write_text(private_pem(key))
    from services.infra.signing import public_pem

    sandbox_port, ingress_port = free_port(), free_port()
    env = {
        **base_env,
        "GHL_API_KEY": "sandbox-ghl-key",
        "VERITY_BASE_URL": f"http://127.0.0.1:{sandbox_port}/verity",
        "VERITY_API_KEY": "sandbox-verity-key",
        "ALOWARE_API_TOKEN": "sandbox-aloware-token",
        "GHL_BASE_URL": f"http://127.0.0.1:{sandbox_port}/ghl",
        "ALOWARE_BASE_URL": f"http://127.0.0.1:{sandbox_port}/aloware/api/v1",
        "SANDBOX_PORT": str(sandbox_port),
        "INGRESS_PORT": str(ingress_port),
        "DFM_SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{ingress_port}",
        "DFM_GHL_SIGNING_KEY_FILE": str(key_file),
        "GHL_WEBHOOK_ED25519_PUBLIC_KEY": public_pem(key),
        "RETRY_BASE_DELAY_S": "0.2",
        "RETRY_MAX_DELAY_S": "1",
        "ALOWARE_MAX_RPS": "200",
        "DFM_CONSUMER_ACK_WAIT_S": "4",
        "GHL_CLIENT_ID": "sandbox-client-id",
        "GHL_CLIENT_SECRET": "sandbox-client-secret",
        "GHL_CONVERSATION_PROVIDER_ID": "sandbox-provider",
        "DFM_TOKEN_KEY": "Qk9_hHuUeXy6sWr5lD6c0mJ3Ojz3v0Yt3kHq3Yl7x8M=",
        **extra,
    }
    return Settings(**{k.lower(): v for k, v in env.items()})


@asynccontextmanager
async def consumers(settings: Settings, replicas: int, *, window_s: int = 10) -> AsyncIterator[None]:
    """``replicas`` processes' worth of ghl-sync, aloware-sync and verity-sync, sharing the
    durables: each replica has its own engine (pool), clients and NATS connections, like a
    process."""
    assert settings.ghl_api_key and settings.ghl_location_id and settings.aloware_api_token
    clients: list[Any] = []
    engines: list[Any] = []
    brokers: list[Any] = []
    batch = consumer_batch(settings)
    for _ in range(replicas):
        for durable in (GHL_SYNC, ALOWARE_SYNC, VERITY_SYNC):
            engine = create_engine(settings)
            engines.append(engine)
            budget = RateBudget.for_ghl(engine, settings, window_s)  # wired as the services' main.py
            ghl = GhlClient.from_settings(settings, budget.acquire, budget.observe)
            alo = AlowareClient.from_settings(settings)
            oauth = GhlOAuth(settings, engine)
            conversations = GhlConversations(settings, oauth, acquire=budget.acquire, observe=budget.observe)
            clients += [ghl, alo, oauth, conversations]
            if durable is GHL_SYNC:
                ghl_sync = GhlSync(settings, engine, ghl, alo, conversations)
                clients.append(ghl_sync)
                rule = ghl_sync.handle
            elif durable is ALOWARE_SYNC:
                rule = AlowareSync(settings, engine, ghl, alo).handle
            else:
                verity = VeritySync(settings, engine, conversations, ghl=ghl)
                clients.append(verity)
                rule = verity.handle
            # ghl-sync serves both of its lanes' durables (issue #18), as `dfm run ghl-sync` does
            lanes = ghl_sync_lanes(settings.dfm_bulk_subjects).values() if durable is GHL_SYNC else (durable,)
            for spec in lanes:
                consumer = EventConsumer(settings, spec, engine, rule)
                brokers.append(await start_sync_broker(settings, spec, consumer.handle, batch))
    try:
        yield
    finally:
        for broker in brokers:
            await broker.stop()
        for client in clients:
            await client.aclose()
        for engine in engines:
            await engine.dispose()


@asynccontextmanager
async def running_pipeline(settings: Settings, replicas: int = 1, **kwargs: Any) -> AsyncIterator[Pipeline]:
    """Sandbox vendors, recorder, ``replicas`` of every sync consumer (0: none, events wait on
    the stream and in the ledger) and the ingress."""
    async with AsyncExitStack() as stack:
        sandbox_url = await stack.enter_async_context(
            serving(create_sandbox_app(settings), "/_sandbox/calls", port=settings.sandbox_port)
        )
        await stack.enter_async_context(running_recorder(settings))
        await stack.enter_async_context(consumers(settings, replicas, **kwargs))
        ingress_url = await stack.enter_async_context(running_ingress(settings, port=settings.ingress_port))
        # Tests send bursts of hundreds of webhooks at once through this client's 100
        # connections; the rest queue in the client. That queue is the test's, not the
        # ingress's, so waiting for a connection has no limit (in a CI run with three workers on
        # two cores, a 400-request burst waited longer than 10 s for one); each exchange keeps
        # its 10 s bound, which is the hang guard.
        ingress = await stack.enter_async_context(
            httpx.AsyncClient(base_url=ingress_url, timeout=httpx.Timeout(10, pool=None))
        )
        sandbox = await stack.enter_async_context(httpx.AsyncClient(base_url=sandbox_url, timeout=10))
        yield Pipeline(settings, ingress, sandbox)


async def eventually(check: Any, timeout: float = 20, interval: float = 0.1) -> Any:
    """Poll an async predicate until it returns something truthy (async effects)."""
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(interval)
