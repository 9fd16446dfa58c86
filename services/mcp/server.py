"""The MCP server (spec/outbound.md §3.3): stdio, the ``mcp`` 2.x SDK's low-level ``Server``
with a dynamic tool list — one tool per Verity catalog endpoint and method that
``MCP_TOOL_ALLOWLIST`` lets through, plus operator tools of our own (events, stream stats,
replay with dry-run, quarantine, mark done), always listed.

For agents (issue #20): every tool carries annotations (read-only, destructive, idempotent,
open-world) and an ``outputSchema``; a result carries ``structuredContent`` and, for older
clients, the same JSON as text. Arguments are checked against the tool's input schema before
anything runs. When the catalog file changes and the tool list with it, clients hear
``notifications/tools/list_changed``: spontaneously on the initialize handshake (protocol
2024-11-05 … 2025-11-25), on their ``subscriptions/listen`` stream on 2026-07-28.

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
from contextvars import ContextVar
from datetime import datetime
from typing import Any

import mcp.types as types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from nats.js.errors import NotFoundError
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
from services.infra.db.session import create_engine
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.mcp.operator_tools import OPERATOR_TOOLS
from services.mcp.tools import CatalogTool, allowed, as_mcp_tool, generate, map_arguments
from services.mcp.watch import CatalogWatch
from services.tooling.operations import (
    EventFilter,
    OperationError,
    list_events,
    mark_done,
    quarantine,
    replay_status,
    replay_status_body,
    show_event,
)

log = get_logger(__name__)
SERVER_NAME = "df-middleware-mcp-server"
SERVER_VERSION = "1.0.0"
REPLAY_WAIT_S = 30.0
# progress, total, message -> notifications/progress for the tool call being served (a no-op
# when the caller gave no progressToken)
ProgressSender = Callable[[float, float | None, str | None], Awaitable[None]]
PROGRESS: ContextVar[ProgressSender | None] = ContextVar("mcp_progress", default=None)
INSTRUCTIONS = (
    "DF-Middleware: tools named after Verity's API (one per endpoint and method) call Verity; the dfm_* tools "
    "read and act on the middleware's own events and streams. Read-only tools are annotated so; dfm_replay "
    "defaults to a dry run that only reports; dfm_event_quarantine and dfm_event_mark_done change an event's "
    "status. The tool list follows Verity's catalog and can change while connected."
)
OPERATOR_SCHEMAS = {t.name: t.input_schema for t in OPERATOR_TOOLS}


class ToolError(Exception):
    """A tool failed; the message is what the agent sees after ``Error: ``."""


def _result(data: Any, *, wrapped: bool = False) -> types.CallToolResult:
    """``structuredContent`` (``{"data": ...}`` when ``wrapped``: a catalog tool's answer need not
    be an object) and the JSON of the data as text, for clients that read only content."""
    plain = json.loads(json.dumps(data, default=str))  # the JSON both channels carry
    text = types.TextContent(type="text", text=json.dumps(plain, indent=2))
    return types.CallToolResult(content=[text], structured_content={"data": plain} if wrapped else plain)


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"Error: {message}")], is_error=True)


def _check_arguments(schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    error = best_match(Draft202012Validator(schema).iter_errors(arguments))
    if error is not None:
        raise ToolError(f"Input validation error: {error.message}")


class McpBackend:
    """Everything the tools call: the catalog, Verity, Clerk, and (lazily) PostgreSQL and NATS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.verity_catalog_path)
        # one engine for the operator tools and the opt-out gate; creating it connects nothing
        self._engine: AsyncEngine | None = create_engine(settings, pool_size=2) if settings.database_url else None
        self.proxy = VerityProxy(settings, gate=OptOutGate(settings, self._engine, sender="mcp"))
        self.clerk = ClerkTokenManager(settings)
        self.allowlist = tuple(settings.mcp_tool_allowlist)
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
        """Every tool of the catalog as the file is now (it reloads when the file changes); empty
        while it is unavailable."""
        return generate(self.catalog.endpoints)

    def list_tools(self) -> list[types.Tool]:
        """What ``tools/list`` answers: the allowed catalog tools, then every operator tool."""
        catalog = [as_mcp_tool(t) for t in self.catalog_tools() if allowed(t.name, self.allowlist)]
        return catalog + OPERATOR_TOOLS

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        try:
            handler = OPERATOR_HANDLERS.get(name)
            if handler is not None:
                _check_arguments(OPERATOR_SCHEMAS[name], arguments)
                return _result(await handler(self, arguments))
            if self.catalog.load() is None:
                raise ToolError("Failed to load API catalog")
            tool = next((t for t in self.catalog_tools() if t.name == name), None)
            if tool is None:
                raise ToolError(f"Unknown tool: {name}")
            if not allowed(name, self.allowlist):
                raise ToolError(f"Tool {name} is not in MCP_TOOL_ALLOWLIST")
            _check_arguments(tool.input_schema, arguments)
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
        return _result(result.envelope.get("data"), wrapped=True)

    async def _proxy(
        self, tool: CatalogTool, params: dict[str, str], query: dict[str, Any], body: Any, token: str
    ) -> ProxyResult:
        return await self.proxy.call(
            tool.path, tool.method, params=params, query=query, body=body, token=token, metric_endpoint=tool.path
        )

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
    f = EventFilter(
        table=a.get("table", "webhook"),
        status=a.get("status"),
        source=a.get("source"),
        event_type=a.get("eventType"),
        entity_id=a.get("entityId"),
        order=a.get("order", "desc"),
        limit=int(a.get("limit", 20)),
        cursor=a.get("cursor"),
    )
    events, cursor = await list_events(b.engine(), f)
    return {"events": events, "count": len(events), "nextCursor": cursor}


async def _event_show(b: McpBackend, a: dict[str, Any]) -> Any:
    return await show_event(b.engine(), _uuid(a["id"]))


async def _stream_stats(b: McpBackend, _: dict[str, Any]) -> Any:
    js = (await b.nats()).jetstream()
    out: dict[str, Any] = {"streams": {}, "consumers": {}}
    for stream in STREAMS:
        state = (await js.stream_info(stream.name)).state
        out["streams"][stream.name] = {
            "messages": state.messages,
            "bytes": state.bytes,
            "first_seq": state.first_seq,
            "last_seq": state.last_seq,
        }
    for consumer in CONSUMERS:
        try:
            info = await js.consumer_info(consumer.stream, consumer.durable)
        except NotFoundError:  # a durable not created yet
            continue
        out["consumers"][consumer.durable] = {
            "stream": consumer.stream,
            "pending": info.num_pending,
            "ack_pending": info.num_ack_pending,
            "redelivered": info.num_redelivered,
            "waiting": info.num_waiting,
        }
    return out


async def _replay(b: McpBackend, a: dict[str, Any]) -> Any:
    try:
        command = ReplayRequested(
            event_ids=[_uuid(i) for i in a.get("event_ids") or []],
            subject=a.get("subject"),
            since=_time(a.get("since")),
            until=_time(a.get("until")),
            from_seq=a.get("from_seq"),
            to_seq=a.get("to_seq"),
            force=bool(a.get("force", False)),
            dry_run=bool(a.get("dry_run", True)),
            requested_by="mcp",
        )
    except ValueError as exc:
        raise ToolError(str(exc).splitlines()[-1] if "\n" in str(exc) else str(exc)) from None
    js = (await b.nats()).jetstream()
    await js.publish(
        REPLAY_SUBJECT, command.model_dump_json().encode(), headers={"Nats-Msg-Id": f"replay:{command.command_id}"}
    )
    send = PROGRESS.get()
    last: tuple[Any, ...] | None = None
    try:
        async with asyncio.timeout(REPLAY_WAIT_S):
            while True:
                found = await replay_status(b.engine(), command.command_id)
                if found is not None and found["status"] == "success":
                    return found["totals"]
                if found is not None and found["status"] == "error":
                    raise ToolError(f"replay {command.command_id} failed: {found['error']}")
                totals = (found or {}).get("totals") or {}
                now = (totals.get("done", 0), totals.get("selected"))
                if send is not None and now != last:
                    last = now
                    done, selected = now
                    of = f" of {selected}" if selected is not None else ""
                    await send(float(done), float(selected) if selected is not None else None, f"replayed {done}{of}")
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise ToolError(
            f"replay {command.command_id} still running after {REPLAY_WAIT_S:.0f} s; follow it with dfm_replay_status"
        ) from None


async def _replay_status(b: McpBackend, a: dict[str, Any]) -> Any:
    try:
        command_id = uuid.UUID(str(a["command_id"]))
    except ValueError:
        raise ToolError(f"not a command id: {a['command_id']!r}") from None
    found = await replay_status(b.engine(), command_id)
    if found is None:  # queued and not taken yet, or unknown
        return {"commandId": str(command_id), "status": "queued"}
    return replay_status_body(str(command_id), found)


async def _quarantine(b: McpBackend, a: dict[str, Any]) -> Any:
    table = await quarantine(b.engine(), _uuid(a["id"]), reason=a.get("reason") or "Quarantined via MCP", by="mcp")
    return {"success": True, "eventId": a["id"], "table": table, "status": "quarantined"}


async def _mark_done(b: McpBackend, a: dict[str, Any]) -> Any:
    table = await mark_done(b.engine(), _uuid(a["id"]), by="mcp")
    return {"success": True, "eventId": a["id"], "table": table, "status": "done"}


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
    "dfm_events_list": _events_list,
    "dfm_event_show": _event_show,
    "dfm_stream_stats": _stream_stats,
    "dfm_replay": _replay,
    "dfm_replay_status": _replay_status,
    "dfm_event_quarantine": _quarantine,
    "dfm_event_mark_done": _mark_done,
}


class ToolListAudience:
    """Who hears that the tool list changed. On the initialize handshake the session that
    listed the tools is told directly (stdio serves one client, so the latest session is the
    client); on 2026-07-28 nothing is sent unasked, and the news goes to the
    ``subscriptions/listen`` streams through the bus."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._session: ServerSession | None = None

    def listed(self, ctx: ServerRequestContext[Any]) -> None:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._session = ctx.session

    async def announce(self) -> None:
        if self._session is not None:
            await self._session.send_tool_list_changed()  # best effort: a gone client is no error
        await self.bus.publish(ToolsListChanged())


def build_server(backend: McpBackend, audience: ToolListAudience, watch: CatalogWatch) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], _: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = backend.list_tools()
        audience.listed(ctx)
        watch.served(tools)
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        token = PROGRESS.set(ctx.session.report_progress)
        try:
            return await backend.call(params.name, params.arguments or {})
        finally:
            PROGRESS.reset(token)

    return Server(
        SERVER_NAME,
        version=SERVER_VERSION,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_subscriptions_listen=ListenHandler(audience.bus),
    )


async def serve(settings: Settings) -> None:
    from mcp.server.stdio import stdio_server

    backend = McpBackend(settings)
    audience = ToolListAudience()
    watch = CatalogWatch(backend.catalog.path, backend.list_tools, audience.announce)
    server = build_server(backend, audience, watch)
    names = [t.name for t in backend.catalog_tools()]
    unmatched = [p for p in backend.allowlist if not any(allowed(n, [p]) for n in names)]
    log.info("mcp_server_starting", catalog_tools=len(names), allowlist=list(backend.allowlist))
    if names and unmatched:  # a typo in MCP_TOOL_ALLOWLIST hides tools silently otherwise
        log.warning("mcp_allowlist_matches_nothing", patterns=unmatched)
    options = server.create_initialization_options(NotificationOptions(tools_changed=True))
    try:
        async with stdio_server() as (read, write), asyncio.TaskGroup() as tasks:
            watching = tasks.create_task(watch.run())
            try:
                await server.run(read, write, options)
            finally:
                watching.cancel()
    finally:
        await backend.aclose()
