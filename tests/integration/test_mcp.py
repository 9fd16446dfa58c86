"""The MCP server driven by the official ``mcp`` client over stdio (a real ``dfm run mcp``
process), against the sandbox's fake Verity and Clerk (spec/outbound.md §3.3)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.clients.verity import Endpoint
from services.infra.settings import Settings
from services.mcp.server import McpBackend
from services.mcp.tools import ANY_JSON, allowed, as_mcp_tool, generate, map_arguments
from services.mcp.watch import CatalogWatch
from tests.support.jobs_rig import execute, running_jobs
from tests.support.mcp import (  # noqa: F401  # noqa: F401
    CATALOG,
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


def catalog_endpoints() -> list[Endpoint]:
    data = json.loads(CATALOG.read_text())
    return [
        Endpoint(e["path"], tuple(e["methods"]), e.get("description"), e.get("parameters") or {}, e.get("authType"))
        for e in data["endpoints"]
    ]


def test_tool_names_and_resolution_match_the_parity_table() -> None:
    tools = generate(catalog_endpoints())
    assert {t.name: (t.method, t.path) for t in tools} == PARITY
    by_name = {t.name: t for t in tools}
    schema = by_name["comms_contacts_create"].input_schema
    assert schema["properties"]["body"]["type"] == "object"  # this method's body, not the first method's
    assert by_name["comms_broadcasts_get"].input_schema["properties"]["page"]["type"] == "number"
    assert by_name["comms_broadcasts_get_by_id"].input_schema["required"] == ["id"]
    params, query, body = map_arguments(
        by_name["comms_contacts_patch"], {"id": "c1", "phone": "+15550001111", "canText": True, "junk": 1}
    )
    assert (params, query, body) == ({"id": "c1"}, {}, {"phoneE164": "+15550001111", "canText": True})
    params, query, body = map_arguments(by_name["comms_broadcasts_get"], {"page": 2, "status": ["a", "b"]})
    assert (params, query, body) == ({}, {"page": 2, "status": ["a", "b"]}, None)
    assert map_arguments(by_name["calls_scripts_test"], {"scriptId": "s1", "body": {"to": "+1555", "x": 1}}) == (
        {"scriptId": "s1"},
        {},
        {"to": "+1555"},
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with sandbox_api() as api:
        yield api


async def test_tools_calls_token_refresh_and_errors_over_stdio(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, client = sandbox
    async with mcp_session(mcp_env(base_env, url)) as session:
        tools = (await session.list_tools()).tools
        assert len(tools) == len(PARITY) + len(OPERATOR)
        assert {t.name for t in tools} == set(PARITY) | OPERATOR

        result = await session.call_tool("comms_broadcasts_get_by_id", {"id": "b7"})
        assert not result.is_error, text_of(result)
        assert json.loads(text_of(result)) == {
            "method": "GET",
            "path": "/api/comms/broadcasts/b7",
            "query": {},
            "body": None,
            "user": "user_sandbox_service",
        }
        created = await session.call_tool("calls_scripts_create", {"body": {"name": "intro"}})
        assert json.loads(text_of(created))["path"] == "/api/calls/scripts"  # not the /test endpoint

        await client.post("/_sandbox/clerk/expire-tokens")  # Verity now rejects the cached token
        again = await session.call_tool("comms_broadcasts_get", {"page": 2})
        assert not again.is_error, text_of(again)
        assert json.loads(text_of(again))["query"] == {"page": "2"}
        calls = (await client.get("/_sandbox/calls")).json()
        minted = [c for c in calls if c["vendor"] == "clerk" and c["method"] == "POST"]
        assert len(minted) == 2  # first token, then exactly one refresh after the 401
        statuses = [c["status"] for c in calls if c["vendor"] == "verity" and c["path"] == "/api/comms/broadcasts"]
        assert statuses == [401, 200]

        sms = await session.call_tool("sms_sms_create", {"body": {"to": "+15550001111", "body": "hi"}})
        assert not sms.is_error and json.loads(text_of(sms))["messageId"].startswith("vmsg")

        missing = await session.call_tool("comms_broadcasts_get_by_id", {"id": "missing"})
        assert missing.is_error and text_of(missing) == "Error: Not found: /api/comms/broadcasts/missing"
        unknown = await session.call_tool("no_such_tool", {})
        assert unknown.is_error and text_of(unknown) == "Error: Unknown tool: no_such_tool"
        still = await session.call_tool("health_health_get", {})  # the server survived every error
        assert json.loads(text_of(still)) == {"status": "ok"}


async def test_a_second_401_after_the_refresh_is_reported_not_retried_again(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, client = sandbox
    async with mcp_session(mcp_env(base_env, url)) as session:
        await client.post("/_sandbox/clerk/expire-tokens", params={"all": "true"})
        result = await session.call_tool("comms_broadcasts_get", {})
        assert result.is_error
        assert text_of(result) == "Error: Authentication failed after token refresh: Unauthorized"
        calls = (await client.get("/_sandbox/calls")).json()
        assert len([c for c in calls if c["vendor"] == "clerk" and c["method"] == "POST"]) == 2
        assert [c["status"] for c in calls if c["vendor"] == "verity"] == [401, 401]


async def test_a_service_user_without_an_active_session_gets_a_clear_error(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, _ = sandbox
    env = mcp_env(base_env, url, CLERK_SERVICE_USER_ID="user_without_sessions")
    async with mcp_session(env) as session:
        result = await session.call_tool("comms_broadcasts_get", {})
        assert result.is_error
        assert text_of(result).startswith("Error: Failed to get Clerk authentication token: no active Clerk session")


async def test_operator_tools_list_show_and_replay_dry_run(
    base_env: dict[str, str], settings: Settings, clean_db: str, sandbox: tuple[str, httpx.AsyncClient]
) -> None:
    url, _ = sandbox
    ident = "5a1d0000-0000-4000-8000-000000000001"
    payload = {"event": "Contact Created", "body": {"id": "8000123", "phone_number": "+15555550123"}}
    await execute(
        clean_db,
        """
        INSERT INTO webhook_events (id, source, event_type, event_token, canonical_type, entity_type, entity_id,
            payload_json, dedupe_key, status, outcome)
        VALUES ($1::uuid, 'aloware', 'Contact Created', 'contact_created', 'contact.created', 'contact', '8000123',
                $2::jsonb, 'mcp:1', 'done', 'applied')""",
        ident,
        json.dumps(payload),
    )
    async with running_jobs(settings), mcp_session(mcp_env(base_env, url)) as session:
        listed = json.loads(text_of(await session.call_tool("dfm_events_list", {"status": "done"})))
        assert [e["id"] for e in listed["events"]] == [ident]
        assert listed["events"][0]["payload"]["body"]["phone_number"] == "[REDACTED]"
        shown = json.loads(text_of(await session.call_tool("dfm_event_show", {"id": ident})))
        assert shown["dedupeKey"] == "mcp:1"
        report = json.loads(text_of(await session.call_tool("dfm_replay", {"event_ids": [ident]})))
        assert report["dryRun"] is True and report["wouldReplay"] == 1 and report["replayed"] == 0
        assert report["items"][0]["consumers"] == ["ghl-sync"]
        stats = json.loads(text_of(await session.call_tool("dfm_stream_stats", {})))
        assert {"WEBHOOKS", "JOBS"} <= set(stats["streams"]) and "jobs" in stats["consumers"]
        bad = await session.call_tool("dfm_event_show", {"id": "nope"})
        assert bad.is_error and text_of(bad) == "Error: not an event id: 'nope'"
        gone = await session.call_tool("dfm_event_show", {"id": "5a1d0000-0000-4000-8000-00000000ffff"})
        assert gone.is_error and "Event not found" in text_of(gone)


async def test_without_a_catalog_the_server_starts_with_operator_tools_only(
    base_env: dict[str, str], sandbox: tuple[str, httpx.AsyncClient], tmp_path: Path
) -> None:
    url, _ = sandbox
    catalog = tmp_path / "catalog.json"
    async with mcp_session(mcp_env(base_env, url, VERITY_CATALOG_PATH=str(catalog))) as session:
        assert {t.name for t in (await session.list_tools()).tools} == OPERATOR
        failed = await session.call_tool("health_health_get", {})
        assert failed.is_error and text_of(failed) == "Error: Failed to load API catalog"
        catalog.write_text(CATALOG.read_text())  # tools/list retries the load
        assert len((await session.list_tools()).tools) == len(PARITY) + len(OPERATOR)


# --- annotations, the allow-list and the catalog watch (pure, in-process) ---------------------
def hints(tool: Any) -> tuple[bool | None, bool | None, bool | None, bool | None]:
    a = tool.annotations
    return a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint


def test_catalog_tools_carry_hints_from_their_http_method_and_a_fixed_result_envelope() -> None:
    tools = {t.name: as_mcp_tool(t) for t in generate(catalog_endpoints())}
    # (readOnly, destructive, idempotent, openWorld): every catalog tool calls Verity
    assert hints(tools["comms_broadcasts_get"]) == (True, False, True, True)
    assert hints(tools["comms_broadcasts_create"]) == (False, False, False, True)  # additive
    assert hints(tools["comms_broadcasts_patch"]) == (False, True, False, True)
    assert hints(tools["comms_broadcasts_delete"]) == (False, True, True, True)
    assert hints(tools["sms_sms_create"]) == (False, False, False, True)
    by_id = tools["comms_broadcasts_get_by_id"].annotations
    assert by_id is not None and by_id.title == "GET /api/comms/broadcasts/[id]"
    for tool in tools.values():
        assert tool.output_schema == {"type": "object", "properties": {"data": ANY_JSON}, "required": ["data"]}


def test_the_allow_list_takes_names_and_glob_patterns() -> None:
    names = [t.name for t in generate(catalog_endpoints())]
    assert [n for n in names if allowed(n, ["comms_broadcasts_*", "health_health_get"])] == [
        "comms_broadcasts_get",
        "comms_broadcasts_create",
        "comms_broadcasts_get_by_id",
        "comms_broadcasts_patch",
        "comms_broadcasts_delete",
        "health_health_get",
    ]
    assert all(allowed(n, []) for n in names)  # no allow-list: every catalog tool
    assert not allowed("comms_broadcasts_get", ["COMMS_*"])  # names are case-sensitive, as MCP's are


async def test_the_catalog_watch_announces_a_changed_tool_list_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    write_catalog(path, catalog_json())
    settings = Settings(verity_catalog_path=str(path), mcp_tool_allowlist=["comms_*", "health_*"])
    backend = McpBackend(settings)
    announced: list[int] = []

    async def announce() -> None:
        announced.append(len(backend.list_tools()))

    try:
        watch = CatalogWatch(path, backend.list_tools, announce)
        assert not await watch.check()  # nothing happened since the start
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert not await watch.check()  # a new mtime, the same tools
        write_catalog(path, [*catalog_json(), {"path": "/api/calls/recordings", "methods": ["GET"]}])
        assert not await watch.check()  # a new tool the allow-list leaves out: the list is the same
        assert announced == []

        write_catalog(path, [e for e in catalog_json() if e["path"] != "/api/health"])
        assert await watch.check()
        assert announced == [len(OPERATOR) + 8]  # the 8 comms_* tools; health is gone
        assert not await watch.check()  # announced once

        write_catalog(path, catalog_json())
        watch.served(backend.list_tools())  # a client listed the tools before the watch looked
        assert not await watch.check()

        path.unlink()  # the catalog tools go with the file
        assert await watch.check()
        assert announced[-1] == len(OPERATOR)
    finally:
        await backend.aclose()
