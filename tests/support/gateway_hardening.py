"""Helpers shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
from starlette.responses import Response

from services.gateway.app import create_app
from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from tests.support.gateway import gateway_settings
from tests.support.ingress_rig import serving


def bouncing(inner: Any) -> Any:
    """The sandbox app, plus ``/verity/api/bounce?to=<location>&status=<3xx>``: Verity answering a
    redirect to wherever the test says."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/verity/api/bounce":
            query = parse_qs(scope["query_string"].decode())
            status = int(query.get("status", ["307"])[0])
            await Response(status_code=status, headers={"location": query["to"][0]})(scope, receive, send)
            return
        await inner(scope, receive, send)

    return app


@asynccontextmanager
async def bouncing_stack(**extra: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, str, str]]:
    """Gateway → the sandbox's Verity on one origin; the same sandbox on a second origin too."""
    sandbox_app = bouncing(create_sandbox_app(Settings()))
    async with (
        serving(sandbox_app, "/_sandbox/calls") as sandbox_url,
        serving(sandbox_app, "/_sandbox/calls") as other_origin,
    ):
        settings = gateway_settings(sandbox_url, **extra)
        async with (
            serving(create_app(settings), "/health") as gw_url,
            httpx.AsyncClient(base_url=gw_url, timeout=10) as gw,
            httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox,
        ):
            yield gw, sandbox, sandbox_url, other_origin


def chain(hops: int, final: str) -> str:
    """A Location that redirects ``hops`` more times (through the bounce path) before ``final``."""
    location = final
    for _ in range(hops):
        location = "/verity/api/bounce?" + urlencode({"to": location})
    return location


__all__ = ["bouncing_stack", "chain"]
