"""Helpers shared by several test modules."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from mcp import ClientSession, StdioServerParameters
from mcp.client.session import MessageHandlerFnT
from mcp.client.stdio import stdio_client

from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from tests.support.ingress_rig import serving

CATALOG = Path(__file__).parents[1] / "fixtures" / "apis" / "verity" / "api_catalog.json"


def server_params(env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "services.cli", "run", "mcp"],
        env={"PATH": os.environ["PATH"], **env},
        cwd=str(Path(__file__).parents[2]),
    )


@asynccontextmanager
async def mcp_session(
    env: dict[str, str], message_handler: MessageHandlerFnT | None = None
) -> AsyncIterator[ClientSession]:
    """The official client on the initialize handshake (protocol 2025-11-25) with a real
    ``dfm run mcp`` process."""
    async with (
        stdio_client(server_params(env)) as (read, write),
        ClientSession(read, write, message_handler=message_handler) as session,
    ):
        await session.initialize()
        yield session


def mcp_env(base_env: dict[str, str], sandbox_url: str, **extra: str) -> dict[str, str]:
    return {
        **base_env,
        "VERITY_BASE_URL": f"{sandbox_url}/verity",
        "VERITY_CATALOG_PATH": str(CATALOG),
        "VERITY_API_KEY": "sandbox-verity-key",
        "CLERK_SECRET_KEY": "sandbox-clerk-secret",
        "CLERK_SERVICE_USER_ID": "user_sandbox_service",
        "CLERK_API_URL": f"{sandbox_url}/clerk/v1",
        "LOG_LEVEL": "warning",
        **extra,
    }


def text_of(result: Any) -> str:
    return "".join(c.text for c in result.content)


PARITY = {  # spec/outbound.md §3.3, the "required" columns
    "comms_broadcasts_get": ("GET", "/api/comms/broadcasts"),
    "comms_broadcasts_create": ("POST", "/api/comms/broadcasts"),
    "comms_broadcasts_get_by_id": ("GET", "/api/comms/broadcasts/[id]"),
    "comms_broadcasts_patch": ("PATCH", "/api/comms/broadcasts/[id]"),
    "comms_broadcasts_delete": ("DELETE", "/api/comms/broadcasts/[id]"),
    "comms_contacts_get": ("GET", "/apicomms/contacts"),
    "comms_contacts_create": ("POST", "/apicomms/contacts"),
    "comms_contacts_patch": ("PATCH", "/apicomms/contacts/[id]"),
    "sms_sms_create": ("POST", "/apisms"),
    "calls_summarize-recent_get": ("GET", "/apicalls/summarize-recent"),
    "calls_scripts_test": ("POST", "/apicalls/scripts/[scriptId]/test"),
    "calls_scripts_get": ("GET", "/apicalls/scripts"),
    "calls_scripts_create": ("POST", "/apicalls/scripts"),
    "health_health_get": ("GET", "/api/health"),
}


OPERATOR = {
    "dfm_events_list",
    "dfm_event_show",
    "dfm_stream_stats",
    "dfm_replay",
    "dfm_replay_status",
    "dfm_event_quarantine",
    "dfm_event_mark_done",
}


@asynccontextmanager
async def sandbox_api() -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The sandbox's fake Verity and Clerk on loopback, and a client of its inspection routes."""
    async with (
        serving(create_sandbox_app(Settings()), "/_sandbox/calls") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield url, client


def write_catalog(path: Path, endpoints: list[dict[str, Any]]) -> None:
    """The catalog as an editor or a deploy writes it: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps({"version": "1.0.0", "endpoints": endpoints}))
    os.replace(fresh, path)


def catalog_json() -> list[dict[str, Any]]:
    return list(json.loads(CATALOG.read_text())["endpoints"])


__all__ = [
    "OPERATOR",
    "PARITY",
    "catalog_json",
    "mcp_env",
    "mcp_session",
    "sandbox_api",
    "server_params",
    "text_of",
    "write_catalog",
]
