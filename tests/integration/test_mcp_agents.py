"""The MCP server as agents meet it (issue #20, "MCP for real agents"), driven by the official
``mcp`` client over stdio against a real ``dfm run mcp`` process: tool annotations, structured
results checked against each tool's output schema, ``tools/list_changed`` when the catalog file
changes (on the initialize handshake and on a 2026-07-28 ``subscriptions/listen`` stream), input
validation, and the allow-list of catalog tools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.client.subscriptions import ToolsListChanged

from services.infra.settings import Settings
from tests.support.jobs_rig import execute, running_jobs
from tests.support.mcp import (
    OPERATOR,
    PARITY,
    catalog_json,
    mcp_env,
    mcp_session,
    sandbox_api,
    server_params,
    text_of,
    write_catalog,
)

# (readOnlyHint, destructiveHint, idempotentHint, openWorldHint) of the operator tools
OPERATOR_HINTS = {
    "dfm_events_list": (True, False, True, False),
    "dfm_event_show": (True, False, True, False),
    "dfm_stream_stats": (True, False, True, False),
    "dfm_replay": (False, True, False, False),
    "dfm_replay_status": (True, False, True, False),
    "dfm_event_quarantine": (False, True, True, False),
    "dfm_event_mark_done": (False, True, True, False),
}
READ_ONLY_CATALOG = {name for name, (method, _) in PARITY.items() if method == "GET"}
CHANGE_WAIT_S = 20.0  # the server looks at the catalog file every second


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with sandbox_api() as api:
        yield api


def hints(tool: types.Tool) -> tuple[bool | None, ...]:
    assert tool.annotations is not None, tool.name
    a = tool.annotations
    return a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint


def check_annotations(tools: list[types.Tool]) -> None:
    by_name = {t.name: t for t in tools}
    assert {n: hints(by_name[n]) for n in OPERATOR} == OPERATOR_HINTS
    for name, (method, path) in PARITY.items():
        tool = by_name[name]
        read_only, destructive, _, open_world = hints(tool)
        assert read_only is (name in READ_ONLY_CATALOG), name
        assert destructive is (method in ("PUT", "PATCH", "DELETE")), name
        assert open_world is True, name  # every catalog tool calls Verity
        assert tool.annotations is not None and tool.annotations.title == f"{method} {path}"
    for tool in tools:  # every result has a fixed shape, so every tool says what it is
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", tool.name


async def test_tools_carry_annotations_and_output_schemas_and_the_server_declares_list_changed(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, _ = sandbox
    async with mcp_session(mcp_env(base_env, url)) as session:
        capabilities = session.server_capabilities
        assert capabilities is not None and capabilities.tools is not None
        assert capabilities.tools.list_changed is True
        tools = (await session.list_tools()).tools
        assert {t.name for t in tools} == set(PARITY) | OPERATOR
        check_annotations(tools)


async def test_catalog_tool_results_are_structured_and_keep_their_text(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, _ = sandbox
    async with mcp_session(mcp_env(base_env, url)) as session:
        await session.list_tools()  # the client checks every result against the listed output schema
        result = await session.call_tool("comms_broadcasts_get_by_id", {"id": "b7"})
        assert not result.is_error, text_of(result)
        data: dict[str, Any] = {
            "method": "GET",
            "path": "/api/comms/broadcasts/b7",
            "query": {},
            "body": None,
            "user": "user_sandbox_service",
        }
        assert result.structured_content == {"data": data}
        assert json.loads(text_of(result)) == data  # older clients read the text block
        health = await session.call_tool("health_health_get", {})
        assert health.structured_content == {"data": {"status": "ok"}}

        failed = await session.call_tool("comms_broadcasts_get_by_id", {"id": "missing"})
        assert failed.is_error and failed.structured_content is None
        wrong = await session.call_tool("comms_broadcasts_get", {"page": "two"})
        assert wrong.is_error and text_of(wrong) == "Error: Input validation error: 'two' is not of type 'number'"
        extra = await session.call_tool("dfm_stream_stats", {"verbose": True})
        assert extra.is_error and text_of(extra).startswith("Error: Input validation error: Additional properties")


async def test_operator_tool_results_are_structured_and_mark_done_and_quarantine_are_tools(
    base_env: dict[str, str], settings: Settings, clean_db: str, sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, _ = sandbox
    errored = "5a1d0000-0000-4000-8000-000000000002"
    done = "5a1d0000-0000-4000-8000-000000000003"
    for ident, status, key in ((errored, "error", "mcp:2"), (done, "done", "mcp:3")):
        await execute(
            clean_db,
            """
            INSERT INTO webhook_events (id, source, event_type, event_token, canonical_type, entity_type, entity_id,
                payload_json, dedupe_key, status)
            VALUES ($1::uuid, 'aloware', 'Contact Created', 'contact_created', 'contact.created', 'contact', '8000123',
                    '{"event": "Contact Created"}'::jsonb, $3, $2)""",
            ident,
            status,
            key,
        )
    async with running_jobs(settings), mcp_session(mcp_env(base_env, url)) as session:
        await session.list_tools()
        listed = await session.call_tool("dfm_events_list", {"status": "error"})
        assert not listed.is_error, text_of(listed)
        assert listed.structured_content == json.loads(text_of(listed))
        assert [e["id"] for e in listed.structured_content["events"]] == [errored]
        shown = await session.call_tool("dfm_event_show", {"id": errored})
        assert shown.structured_content is not None and shown.structured_content["dedupeKey"] == "mcp:2"
        stats = await session.call_tool("dfm_stream_stats", {})
        assert stats.structured_content is not None and "WEBHOOKS" in stats.structured_content["streams"]
        report = await session.call_tool("dfm_replay", {"event_ids": [done]})
        assert report.structured_content is not None and report.structured_content["wouldReplay"] == 1

        marked = await session.call_tool("dfm_event_mark_done", {"id": errored})
        assert marked.structured_content == {"success": True, "eventId": errored, "table": "webhook", "status": "done"}
        again = await session.call_tool("dfm_event_mark_done", {"id": errored})  # idempotent, as announced
        assert again.structured_content == marked.structured_content
        held = await session.call_tool("dfm_event_quarantine", {"id": done, "reason": "agent test"})
        assert held.structured_content == {
            "success": True,
            "eventId": done,
            "table": "webhook",
            "status": "quarantined",
        }
        refused = await session.call_tool("dfm_event_mark_done", {"id": done})
        assert refused.is_error and "only pending, error or dead" in text_of(refused)
        rows = await session.call_tool("dfm_events_list", {"order": "asc"})
        assert rows.structured_content is not None
        assert {e["id"]: e["status"] for e in rows.structured_content["events"]} == {
            errored: "done",
            done: "quarantined",
        }


async def test_a_rewritten_catalog_sends_tools_list_changed_and_the_new_list_has_the_change(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient], tmp_path: Path
) -> None:
    url, _ = sandbox
    catalog = tmp_path / "catalog.json"
    write_catalog(catalog, catalog_json())
    changed = anyio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    env = mcp_env(base_env, url, VERITY_CATALOG_PATH=str(catalog))
    async with mcp_session(env, message_handler=on_message) as session:
        before = {t.name for t in (await session.list_tools()).tools}
        assert before == set(PARITY) | OPERATOR
        write_catalog(
            catalog,
            [
                *(e for e in catalog_json() if e["path"] != "/api/health"),
                {"path": "/api/comms/templates", "methods": ["GET"], "description": "Templates"},
            ],
        )
        with anyio.fail_after(CHANGE_WAIT_S):
            await changed.wait()
        after = {t.name: t for t in (await session.list_tools()).tools}
        assert set(after) == (before - {"health_health_get"}) | {"comms_templates_get"}
        assert after["comms_templates_get"].description == "Templates"
        result = await session.call_tool("comms_templates_get", {})  # the new tool works at once
        assert not result.is_error, text_of(result)
        gone = await session.call_tool("health_health_get", {})
        assert gone.is_error and text_of(gone) == "Error: Unknown tool: health_health_get"


async def test_the_current_client_on_the_2026_protocol_hears_list_changed_on_its_listen_stream(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient], tmp_path: Path
) -> None:
    url, _ = sandbox
    catalog = tmp_path / "catalog.json"
    write_catalog(catalog, catalog_json())
    env = mcp_env(base_env, url, VERITY_CATALOG_PATH=str(catalog))
    async with Client(server_params(env)) as client:  # mode "auto": server/discover, no handshake
        assert client.protocol_version == "2026-07-28"
        tools = (await client.list_tools()).tools
        check_annotations(tools)
        result = await client.call_tool("health_health_get", {})
        assert result.structured_content == {"data": {"status": "ok"}}
        async with client.listen(tools_list_changed=True) as subscription:
            write_catalog(catalog, [e for e in catalog_json() if not e["path"].startswith("/api/comms/")])
            with anyio.fail_after(CHANGE_WAIT_S):
                event = await anext(subscription)
            assert isinstance(event, ToolsListChanged)
        after = {t.name for t in (await client.list_tools()).tools}
        assert after == {n for n in PARITY if not n.startswith("comms_broadcasts")} | OPERATOR


async def test_the_allow_list_limits_catalog_tools_and_keeps_every_operator_tool(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, _ = sandbox
    env = mcp_env(base_env, url, MCP_TOOL_ALLOWLIST="comms_broadcasts_get*, health_health_get")
    async with mcp_session(env) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert names == {"comms_broadcasts_get", "comms_broadcasts_get_by_id", "health_health_get"} | OPERATOR
        allowed = await session.call_tool("comms_broadcasts_get_by_id", {"id": "b7"})
        assert not allowed.is_error, text_of(allowed)
        left_out = await session.call_tool("sms_sms_create", {"body": {"to": "+15550001111", "body": "hi"}})
        assert left_out.is_error
        assert text_of(left_out) == "Error: Tool sms_sms_create is not in MCP_TOOL_ALLOWLIST"
