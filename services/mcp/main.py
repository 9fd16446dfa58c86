"""``dfm run mcp``: the MCP server on stdio."""

from __future__ import annotations

import asyncio

from services.infra.settings import Settings
from services.mcp.server import serve


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
