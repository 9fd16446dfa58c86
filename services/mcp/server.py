"""The MCP server (spec/outbound.md §3.3): stdio, the ``mcp`` SDK's low-level ``Server`` with
a dynamic tool list — one tool per Verity catalog endpoint and method, plus operator tools
of our own (events, stream stats, replay with dry-run, quarantine).

Verity calls carry a Clerk session token for the service user (cached, refreshed before
expiry, and refreshed exactly once when Verity answers 401); the send-message endpoint uses
``VERITY_API_KEY``. Sends pass the opt-out gate of the Verity proxy first (O-5a, issue #16
item 1): an opted-out recipient is the tool error ``recipient_opted_out: …`` with a
``sync_log`` row, and Verity is not called; without ``DATABASE_URL`` nothing is sent. Every
failure becomes an MCP error result with a clear message; nothing a tool does can stop the
server. Logs go to stderr (stdout is the protocol).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import mcp.types as types
from mcp.server.lowlevel import Server
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import ReplayRequested
from contracts.streams import CONSUMERS, STREAMS
from contracts.subjects import REPLAY_SUBJECT
from services.clients.clerk import ClerkError, ClerkTokenManager
from services.clients.verity import (
    Catalog,
    OptOutGate,
    ProxyError,
    ProxyResult,
    SendRefused,
    VerityProxy,
    is_send_message,
)
from services.infra.db.models import ReconcileRunRow
from services.infra.db.session import create_engine
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.mcp.tools import CatalogTool, generate, map_arguments
from services.tooling.operations import (
    EventFilter,
    OperationError,
    list_events,
    quarantine,
    show_event,
)

log = get_logger(__name__)
SERVER_NAME = "df-middleware-mcp-server"
SERVER_VERSION = "1.0.0"
REPLAY_WAIT_S = 30.0


class ToolError(Exception):
    """A tool failed; the message is what the agent sees after ``Error: ``."""


def _text(data: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(data, indent=2, default=str))])


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"Error: {message}")], isError=True)


OPERATOR_TOOLS: list[types.Tool] = [
    types.Tool(name="dfm_events_list", description="List recorded webhook events (newest or oldest first, "
               "filtered; payloads redacted). Returns events and nextCursor.", inputSchema={
                   "type": "object", "properties": {
                       "table": {"type": "string", "enum": ["webhook", "texting", "broadcast"]},
                       "status": {"type": "string", "enum": ["pending", "processing", "done", "error", "dead",
                                                              "quarantined"]},
                       "source": {"type": "string"}, "eventType": {"type": "string"},
                       "entityId": {"type": "string"}, "order": {"type": "string", "enum": ["asc", "desc"]},
                       "limit": {"type": "integer", "minimum": 1, "maximum": 500},
                       "cursor": {"type": "string"}}, "additionalProperties": False}),
    types.Tool(name="dfm_event_show", description="One event with its per-consumer deliveries, attempts "
               "(vendor calls) and sync_log rows.", inputSchema={
                   "type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"],
                   "additionalProperties": False}),
    types.Tool(name="dfm_stream_stats", description="JetStream streams and durable consumers: messages, "
               "pending, ack-pending and redelivered counts.", inputSchema={
                   "type": "object", "properties": {}, "additionalProperties": False}),
    types.Tool(name="dfm_replay", description="Replay events by id or by subject and time/sequence range "
               "through the jobs service. dry_run (default true) only reports what would be re-delivered.",
               inputSchema={"type": "object", "properties": {
                   "event_ids": {"type": "array", "items": {"type": "string"}},
                   "subject": {"type": "string"}, "since": {"type": "string", "format": "date-time"},
                   "until": {"type": "string", "format": "date-time"},
                   "from_seq": {"type": "integer", "minimum": 1}, "to_seq": {"type": "integer", "minimum": 1},
                   "force": {"type": "boolean"}, "dry_run": {"type": "boolean", "default": True}},
                   "additionalProperties": False}),
    types.Tool(name="dfm_event_quarantine", description="Quarantine an event so it is never processed "
               "until replayed with force.", inputSchema={"type": "object", "properties": {
                   "id": {"type": "string"}, "reason": {"type": "string"}}, "required": ["id"],
                   "additionalProperties": False}),
]


class McpBackend:
    """Everything the tools call: the catalog, Verity, Clerk, and (lazily) PostgreSQL and NATS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.verity_catalog_path)
        # one engine for the operator tools and the opt-out gate; creating it connects nothing
        self._engine: AsyncEngine | None = (create_engine(settings, pool_size=2) if settings.database_url
                                            else None)
        self.proxy = VerityProxy(settings, gate=OptOutGate(settings, self._engine, sender="mcp"))
        self.clerk = ClerkTokenManager(settings)
        self._tools: dict[str, CatalogTool] = {}
        self._nc: Any = None

    async def aclose(self) -> None:
        await self.proxy.aclose()
        await self.clerk.aclose()
        if self._nc is not None:
            await self._nc.drain()
        if self._engine is not None:
            await self._engine.dispose()

    # --- tools -----------------------------------------------------------------------------
    def catalog_tools(self) -> list[CatalogTool]:
        """Regenerated whenever the catalog (re)loads; empty while it is unavailable."""
        tools = generate(self.catalog.endpoints)
        self._tools = {t.name: t for t in tools}
        return tools

    def list_tools(self) -> list[types.Tool]:
        catalog = [types.Tool(name=t.name, description=t.description, inputSchema=t.input_schema)
                   for t in self.catalog_tools()]
        return catalog + OPERATOR_TOOLS

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        try:
            handler = OPERATOR_HANDLERS.get(name)
            if handler is not None:
                return _text(await handler(self, arguments))
            if not self._tools:
                self.catalog_tools()
                if self.catalog.load() is None:
                    raise ToolError("Failed to load API catalog")
            tool = self._tools.get(name)
            if tool is None:
                raise ToolError(f"Unknown tool: {name}")
            return await self._call_verity(tool, arguments)
        except ToolError as exc:
            return _error(str(exc))
        except SendRefused as exc:  # the code first: what an agent (or its operator) acts on
            return _error(f"{exc.code}: {exc.message}")
        except (OperationError, ProxyError) as exc:
            return _error(exc.message)
        except Exception as exc:  # a tool never takes the server down
            log.exception("mcp_tool_failed", tool=name)
            return _error(f"{type(exc).__name__}: {exc}" if str(exc) else "Request failed")

    async def _call_verity(self, tool: CatalogTool, arguments: dict[str, Any]) -> types.CallToolResult:
        params, query, body = map_arguments(tool, arguments)
        if is_send_message(tool.path):
            if not self.settings.verity_api_key:
                raise ToolError("VERITY_API_KEY is not set (needed for send-message)")
            result = await self._proxy(tool, params, query, body, self.settings.verity_api_key.get_secret_value())
        else:
            result = await self._proxy(tool, params, query, body, await self._token())
            if result.status == 401:
                self.clerk.clear()
                result = await self._proxy(tool, params, query, body, await self._token())
                if result.status == 401:
                    raise ToolError(f"Authentication failed after token refresh: {_message(result)}")
        if not result.ok:
            raise ToolError(_message(result))
        return _text(result.envelope.get("data"))

    async def _proxy(self, tool: CatalogTool, params: dict[str, str], query: dict[str, Any], body: Any,
                     token: str) -> ProxyResult:
        return await self.proxy.call(tool.path, tool.method, params=params, query=query, body=body,
                                     token=token, metric_endpoint=tool.path)

    async def _token(self) -> str:
        try:
            return await self.clerk.token()
        except ClerkError as exc:
            raise ToolError(f"Failed to get Clerk authentication token: {exc}") from None

    # --- operator side ---------------------------------------------------------------------
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise ToolError("operator tools need DATABASE_URL")
        return self._engine

    async def nats(self) -> Any:
        if not self.settings.nats_url:
            raise ToolError("operator tools need NATS_URL")
        if self._nc is None:
            from services.infra.broker import connect

            self._nc = await connect(self.settings, name="dfm-mcp", max_reconnect_attempts=3)
        return self._nc


async def _events_list(b: McpBackend, a: dict[str, Any]) -> Any:
    f = EventFilter(table=a.get("table", "webhook"), status=a.get("status"), source=a.get("source"),
                    event_type=a.get("eventType"), entity_id=a.get("entityId"), order=a.get("order", "desc"),
                    limit=int(a.get("limit", 20)), cursor=a.get("cursor"))
    events, cursor = await list_events(b.engine(), f)
    return {"events": events, "count": len(events), "nextCursor": cursor}


async def _event_show(b: McpBackend, a: dict[str, Any]) -> Any:
    return await show_event(b.engine(), _uuid(a["id"]))


async def _stream_stats(b: McpBackend, _: dict[str, Any]) -> Any:
    js = (await b.nats()).jetstream()
    out: dict[str, Any] = {"streams": {}, "consumers": {}}
    for spec in STREAMS:
        info = await js.stream_info(spec.name)
        out["streams"][spec.name] = {"messages": info.state.messages, "bytes": info.state.bytes,
                                     "first_seq": info.state.first_seq, "last_seq": info.state.last_seq}
    for spec in CONSUMERS:
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except Exception:  # a durable not created yet
            continue
        out["consumers"][spec.durable] = {"stream": spec.stream, "pending": info.num_pending,
                                          "ack_pending": info.num_ack_pending,
                                          "redelivered": info.num_redelivered, "waiting": info.num_waiting}
    return out


async def _replay(b: McpBackend, a: dict[str, Any]) -> Any:
    try:
        command = ReplayRequested(
            event_ids=[_uuid(i) for i in a.get("event_ids") or []], subject=a.get("subject"),
            since=_time(a.get("since")), until=_time(a.get("until")), from_seq=a.get("from_seq"),
            to_seq=a.get("to_seq"), force=bool(a.get("force", False)), dry_run=bool(a.get("dry_run", True)),
            requested_by="mcp")
    except ValueError as exc:
        raise ToolError(str(exc).splitlines()[-1] if "\n" in str(exc) else str(exc)) from None
    js = (await b.nats()).jetstream()
    await js.publish(REPLAY_SUBJECT, command.model_dump_json().encode(),
                     headers={"Nats-Msg-Id": f"replay:{command.command_id}"})
    engine = b.engine()
    async with asyncio.timeout(REPLAY_WAIT_S):
        while True:
            async with engine.connect() as conn:
                totals = await conn.scalar(select(ReconcileRunRow.totals).where(
                    ReconcileRunRow.job_name == "replay",
                    ReconcileRunRow.totals["commandId"].astext == str(command.command_id)))
            if totals is not None:
                return totals
            await asyncio.sleep(0.2)


async def _quarantine(b: McpBackend, a: dict[str, Any]) -> Any:
    table = await quarantine(b.engine(), _uuid(a["id"]), reason=a.get("reason") or "Quarantined via MCP",
                             by="mcp")
    return {"success": True, "eventId": a["id"], "table": table, "status": "quarantined"}


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ToolError(f"not an event id: {value!r}") from None


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def _message(result: ProxyResult) -> str:
    error = result.envelope.get("error") or {}
    return str(error.get("message") or "Request failed")


OPERATOR_HANDLERS: dict[str, Callable[[McpBackend, dict[str, Any]], Awaitable[Any]]] = {
    "dfm_events_list": _events_list, "dfm_event_show": _event_show, "dfm_stream_stats": _stream_stats,
    "dfm_replay": _replay, "dfm_event_quarantine": _quarantine,
}


def build_server(backend: McpBackend) -> Server:
    server: Server = Server(SERVER_NAME, version=SERVER_VERSION)

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return backend.list_tools()

    @server.call_tool()
    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return await backend.call(name, arguments or {})

    return server


async def serve(settings: Settings) -> None:
    from mcp.server.stdio import stdio_server

    backend = McpBackend(settings)
    server = build_server(backend)
    log.info("mcp_server_starting", catalog_tools=len(backend.catalog_tools()))
    try:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        await backend.aclose()
