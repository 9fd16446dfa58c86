"""A number that texted STOP is never texted again, whichever way a send comes in (issue #16
item 1; spec/outbound.md O-5a, R3): the gateway's send-message route, the MCP server's send
tool and GHL's conversation provider (M-2) all ask the opt-out registry first, compare in
E.164 after normalisation, refuse with ``recipient_opted_out``, write a ``sync_log`` row and
make no request to Verity. A number that never opted out still goes through.

The STOP arrives as a real texting webhook through the pipeline (ingress → NATS → ghl-sync
O-2) or is written with the registry's own function (``optout.record``); Verity is the
sandbox's fake over HTTP on loopback, and "nothing reached Verity" is read from its recorded
calls."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.phone import to_e164
from services.clients.verity import (
    SEND_MESSAGE_PATH,
    SENDING_ENDPOINTS,
    SendRefused,
    recipients,
    rewrite,
    sending_endpoint,
)
from services.domain import optout
from services.gateway.app import create_app
from services.infra.db.session import create_engine
from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from services.tooling.embedded import free_port
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.gateway import CATALOG, KEY, gateway_settings, stack
from tests.support.gateway_hardening import bouncing_stack, chain
from tests.support.ingress_rig import serving
from tests.support.jobs import all_in
from tests.support.jobs_rig import fetch
from tests.support.mcp import mcp_env, mcp_session, text_of
from tests.support.messages import conversations, install
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline
from tests.support.verity import send_provider, verity_sends

STOPPED = "+15555550103"
FORMS = ("+1 (555) 555-0103", "5555550103", "+15555550103")  # one person, three spellings
NEVER_OPTED_OUT = "+1 (555) 555-0104"


async def verity_send_calls(sandbox: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every request the sandbox's Verity received on send-message, whatever it answered."""
    calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "verity"})).json()
    return [c for c in calls if c["path"].endswith("/send-message")]


async def refusals(db: str) -> list[dict[str, Any]]:
    return await fetch(
        db,
        "SELECT direction, entity_type, status, rule, error_message, target_id, details "
        "FROM sync_log WHERE rule = 'O-5a' ORDER BY finished_at",
    )


async def registry_status(db: str, phone: str) -> str | None:
    rows = await fetch(db, "SELECT status FROM optout_registry WHERE phone_number = $1", phone)
    return rows[0]["status"] if rows else None


async def stop_through_the_pipeline(p: Pipeline, db: str, sender: str) -> None:
    """The person texts STOP (a signed texting webhook); wait until O-2 has recorded it."""
    await send_texting(p, {**load_fixture("texting/optout.stop.json"), "from": sender})
    phone = to_e164(sender)
    assert phone is not None
    await eventually(lambda: _is(registry_status(db, phone), "opted_out"))


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected


async def send_through_gateway(gw: httpx.AsyncClient, to: Any, endpoint: str = "/apisms") -> httpx.Response:
    return await gw.post(
        "/api/verity",
        headers=KEY,
        json={"endpoint": endpoint, "method": "POST", "body": {"to": to, "body": "Your appointment is at 3"}},
    )


# --- which requests send, and to whom ----------------------------------------------------------
def test_sends_are_recognised_by_the_path_they_reach_and_every_recipient_is_normalised() -> None:
    assert sending_endpoint(rewrite("/apisms")) and sending_endpoint(rewrite("/apisms/x"))
    assert sending_endpoint(SEND_MESSAGE_PATH + "/") and sending_endpoint("/verity" + SEND_MESSAGE_PATH)
    assert not sending_endpoint("/api/comms/broadcasts") and not sending_endpoint("/api/calls/scripts/s1/test")
    [send] = SENDING_ENDPOINTS
    assert recipients(send, {"to": "+1 (555) 555-0103"}, None, "US") == [STOPPED]
    assert recipients(send, {"To": ["5555550103", STOPPED, 5555550104], "from": "+15555550100"}, None, "US") == [
        STOPPED,
        "+15555550104",
    ]  # ``from`` is our own number, never a recipient
    assert recipients(send, {"recipients": [{"phone": "555.555.0105"}]}, {"to": "5555550106"}, "US") == [
        "+15555550105",
        "+15555550106",
    ]
    assert recipients(send, {"to": [["5555550103"]]}, None, "US") == [STOPPED]
    for body in (
        {"to": {"x": 1}},
        {"to": [[[["5555550103"]]]]},
        {"body": "hi"},
        {"to": True},
        {"to": []},
        {"to": "12"},
        ["+15555550103"],
    ):
        with pytest.raises(SendRefused) as refused:
            recipients(send, body, None, "US")
        assert (refused.value.status, refused.value.code) == (400, "INVALID_RECIPIENT"), body


# --- the gateway ------------------------------------------------------------------------------
async def test_after_a_stop_the_gateway_refuses_every_form_of_the_number_and_verity_hears_nothing(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, DF_MIDDLEWARE_API_KEY="gw-key-1", VERITY_CATALOG_PATH=str(CATALOG))
    async with running_pipeline(settings) as p:
        await stop_through_the_pipeline(p, clean_db, STOPPED)
        async with serving(create_app(settings), "/metrics") as url, httpx.AsyncClient(base_url=url, timeout=10) as gw:
            answers = [
                await send_through_gateway(gw, form, endpoint)
                for form in FORMS
                for endpoint in ("/apisms", SEND_MESSAGE_PATH)
            ]
            # several recipients: one opted out refuses the whole send
            answers.append(await send_through_gateway(gw, ["+15555550199", "555.555.0103"]))
            for answer in answers:
                assert answer.status_code == 403, answer.text
                body = answer.json()
                assert body["success"] is False and body["error"]["code"] == "recipient_opted_out", body
                assert "555" not in body["error"]["message"]  # the number is not echoed
            assert await verity_send_calls(p.sandbox) == []

            rows = await refusals(clean_db)
            assert len(rows) == len(answers)
            assert {
                (r["direction"], r["entity_type"], r["status"], r["error_message"], r["target_id"]) for r in rows
            } == {("gateway_to_texting", "message", "skipped", "recipient_opted_out", STOPPED)}

            # a number that never opted out reaches Verity, spelled as the caller spelled it
            other = await send_through_gateway(gw, NEVER_OPTED_OUT)
            assert other.json().get("error", {}).get("code") != "recipient_opted_out", other.text
            [sent] = await verity_send_calls(p.sandbox)
            assert sent["body"]["to"] == NEVER_OPTED_OUT
            # (the sandbox's send-message takes only VERITY_API_KEY, which the gateway does not
            # lend its callers (spec §3.2 auth choice): Verity's own answer passes through)
            assert other.status_code == sent["status"]
            assert len(await refusals(clean_db)) == len(answers)


async def test_without_a_readable_registry_the_gateway_sends_nothing() -> None:
    """Fail closed: no DATABASE_URL (or a registry that cannot be read) means no texting, and
    a recipient that cannot be normalised cannot be checked, so it is refused too. Other
    endpoints are not affected."""
    async with stack() as (gw, sandbox):
        unavailable = await send_through_gateway(gw, "+15555550104")
        assert unavailable.status_code == 503, unavailable.text
        assert unavailable.json()["error"]["code"] == "OPTOUT_REGISTRY_UNAVAILABLE"
        for bad in ("not a number", "", 12, None, {"x": 1}):
            body = {"to": bad, "body": "hi"} if bad is not None else {"body": "hi"}
            answer = await gw.post(
                "/api/verity", headers=KEY, json={"endpoint": "/apisms", "method": "POST", "body": body}
            )
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["error"]["code"] == "INVALID_RECIPIENT"
        assert await verity_send_calls(sandbox) == []
        health = await gw.post("/api/verity", headers=KEY, json={"endpoint": "/api/health", "method": "GET"})
        assert health.status_code == 200

        # a database that is configured but cannot be reached: the same refusal
        sandbox_url = str(sandbox.base_url).rstrip("/")
        closed = gateway_settings(sandbox_url, database_url=f"postgresql://nobody:pw@127.0.0.1:{free_port()}/x")
        async with serving(create_app(closed), "/metrics") as url, httpx.AsyncClient(base_url=url) as down:
            unreachable = await send_through_gateway(down, "+15555550104")
            assert unreachable.status_code == 503, unreachable.text
            assert unreachable.json()["error"]["code"] == "OPTOUT_REGISTRY_UNAVAILABLE"
        assert await verity_send_calls(sandbox) == []


async def test_a_redirect_from_verity_never_leads_a_request_into_send_message() -> None:
    """The gate looks at the path a request is sent to; a same-origin redirect (which the
    gateway follows) must not carry an unchecked body into send-message."""
    async with bouncing_stack() as (gw, sandbox, _, _):
        for location in ("/verity" + SEND_MESSAGE_PATH, chain(1, "/verity" + SEND_MESSAGE_PATH)):
            answer = await gw.post(
                "/api/verity",
                headers=KEY,
                json={
                    "endpoint": "/api/bounce",
                    "method": "POST",
                    "query": {"to": location},
                    "body": {"to": STOPPED, "body": "hi"},
                },
            )
            assert answer.status_code == 502, answer.text
            assert answer.json()["error"]["code"] == "UPSTREAM_REDIRECT"
        assert await verity_send_calls(sandbox) == []


# --- the MCP server ---------------------------------------------------------------------------
async def test_after_a_stop_the_mcp_send_tool_refuses_every_form_and_verity_hears_nothing(
    base_env: dict[str, str], clean_db: str
) -> None:
    engine = create_engine(Settings(database_url=clean_db), pool_size=1)
    try:
        async with engine.begin() as conn:  # the registry's own writer, as O-2 calls it
            phone = to_e164(FORMS[0])
            assert phone == STOPPED
            await optout.record(conn, phone, "opted_out", "texting", "STOP", at=datetime.now(UTC), event_id=None)
    finally:
        await engine.dispose()
    async with (
        serving(create_sandbox_app(Settings()), "/_sandbox/calls") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as sandbox,
        mcp_session(mcp_env(base_env, url)) as session,
    ):
        results = [await session.call_tool("sms_sms_create", {"body": {"to": form, "body": "hi"}}) for form in FORMS]
        # ``to`` as a tool argument of its own (the adapter flattens it into the body)
        results.append(await session.call_tool("sms_sms_create", {"to": FORMS[1], "body": {"body": "hi"}}))
        for result in results:
            assert result.is_error, text_of(result)
            assert text_of(result).startswith("Error: recipient_opted_out"), text_of(result)
        assert await verity_send_calls(sandbox) == []
        rows = await refusals(clean_db)
        assert len(rows) == len(results)
        assert {(r["direction"], r["status"], r["target_id"]) for r in rows} == {("mcp_to_texting", "skipped", STOPPED)}

        sent = await session.call_tool("sms_sms_create", {"body": {"to": NEVER_OPTED_OUT, "body": "hi"}})
        assert not sent.is_error, text_of(sent)
        assert json.loads(text_of(sent))["messageId"].startswith("vmsg")
        [call] = await verity_send_calls(sandbox)
        assert call["status"] == 200 and call["body"]["to"] == NEVER_OPTED_OUT


# --- GHL's conversation provider (M-2, gated before this issue) -------------------------------
async def test_after_a_stop_a_ghl_agent_sms_to_the_number_never_reaches_verity(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        await stop_through_the_pipeline(p, clean_db, "5555550101")  # national form
        delivery = load_fixture("ghl-provider-delivery/ProviderOutboundMessage-sms.json")
        refused, _ = await send_provider(p, {**delivery, "phone": "+1 (555) 555-0101"})
        await eventually(lambda: all_in(clean_db, [refused["id"]], "done"))
        [row] = await fetch(
            clean_db, "SELECT outcome, outcome_reason FROM webhook_events WHERE id = $1::uuid", refused["id"]
        )
        assert (row["outcome"], row["outcome_reason"]) == ("skipped", "recipient_opted_out")
        assert await verity_send_calls(p.sandbox) == []
        [message] = (await conversations(p))["messages"]
        assert message["status"] == "failed" and message["error"]["code"] == "opted_out"

        allowed, sms = await send_provider(p, {**delivery, "phone": "+15555550102"})
        await eventually(lambda: all_in(clean_db, [allowed["id"]], "done"))
        [sent] = await verity_sends(p)
        assert sent["body"]["to"] == "+15555550102" and sent["body"]["correlationId"] == sms["messageId"]
