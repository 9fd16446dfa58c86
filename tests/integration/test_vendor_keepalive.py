"""Vendor pools drop an idle connection before a server with the common 5 s keep-alive limit
closes it (``services.clients.http.KEEPALIVE_EXPIRY_S``).

Reusing a connection the server is closing at that moment fails after the request may have
reached it: for a contact create, an outcome nobody knows (an event dead as outcome_unknown,
seen in tests/faults/test_nats_cluster.py against the sandbox's uvicorn). The idle waits below
are the condition under test, not synchronisation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from services.clients.http import KEEPALIVE_EXPIRY_S, VendorHttp
from services.clients.verity import VerityProxy
from services.gateway.redirects import SameOriginRedirects
from services.infra.settings import Settings
from tests.support.ingress_rig import serving

SERVER_KEEPALIVE_S = 5  # uvicorn's default, as the sandbox and many vendors' servers use


async def peer_port(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering every request with the client port it came from."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps({"port": scope["client"][1]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def reconnects_after_idle(get: Callable[[], Awaitable[httpx.Response]]) -> None:
    """``get`` reuses its connection while busy, and opens a new one after an idle spell past
    our limit but within the server's (the port the server saw tells the connections apart)."""

    async def port() -> int:
        return int((await get()).json()["port"])

    first = await port()
    assert await port() == first  # busy: the connection is reused
    await asyncio.sleep(KEEPALIVE_EXPIRY_S + 0.5)  # idle past our limit, within the server's
    assert await port() != first  # a new connection, not one the server may be closing


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "observed"])
async def test_an_idle_vendor_connection_is_replaced_before_the_server_closes_it(observed: bool) -> None:
    assert KEEPALIVE_EXPIRY_S < SERVER_KEEPALIVE_S - 2  # a margin for a busy event loop

    async def observe(response: httpx.Response) -> None:
        return None

    async with serving(peer_port, "/") as base:
        http = VendorHttp("test", base, observe=observe if observed else None)
        try:
            await reconnects_after_idle(lambda: http.request("GET", "/", "test.get"))
        finally:
            await http.aclose()


async def test_the_verity_proxy_pool_drops_idle_connections_too() -> None:
    async with (
        serving(peer_port, "/") as base,
        httpx.AsyncClient(base_url=base, transport=SameOriginRedirects(base)) as client,
    ):
        await reconnects_after_idle(lambda: client.get("/"))


async def test_the_mcp_servers_verity_pool_drops_idle_connections_too() -> None:
    """The MCP server builds its proxy without a client of its own (services/mcp/server.py)."""
    async with serving(peer_port, "/") as base:
        proxy = VerityProxy(Settings(verity_base_url=base))
        try:
            await reconnects_after_idle(lambda: proxy.client.get(f"{base}/"))
        finally:
            await proxy.aclose()
