"""Texting messages into GHL conversations with the location's OAuth token, keywords,
status updates and echo suppression, end to end on the sandbox (spec/outbound.md §1.8, §1.9,
§2.2 OA; acceptance scenarios T4, T5, T7 (texting half), T8, T14)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts.commands import ReplayRequested
from services.clients.ghl_oauth import GhlOAuth, sign_state
from services.infra.db.session import create_engine
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.jobs_rig import execute, fetch, running_jobs
from tests.support.messages import conversations, install, texting_status
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline


async def token_calls(p: Pipeline) -> int:
    return len([c for c in await p.calls("ghl") if c["path"] == "/oauth/token"])


async def test_install_callback_answers_and_stores_tokens_encrypted(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        denied = await p.ingress.get("/leadconnector/oauth", params={"error": "access_denied"})
        assert denied.status_code == 400 and denied.json()["error"] == "access_denied"
        missing = await p.ingress.get("/leadconnector/oauth")
        assert missing.status_code == 400 and missing.json()["error"] == "missing_code"
        bad = await p.ingress.get("/leadconnector/oauth", params={"code": "not-a-code", "state": sign_state(settings)})
        assert bad.status_code == 400 and bad.json()["error"] == "token_exchange_failed"
        await install(p)
        [row] = await fetch(clean_db, "SELECT * FROM ghl_oauth_tokens")
        assert row["location_id"] == settings.ghl_location_id
        assert not row["access_token"].startswith("oat-") and not row["refresh_token"].startswith("ort-")
        assert row["expires_at"] > datetime.now(UTC) + timedelta(hours=23)


async def test_t4_t5_inbound_texts_keywords_and_one_message_each(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        await install(p)
        stop = await send_texting(p, load_fixture("texting/message.received-stop-keyword.json"))  # "Stop"
        plain = await send_texting(p, load_fixture("texting/message.received.json"))
        false_stop = await send_texting(p, load_fixture("texting/message.received-false-stop.json"))
        ids = [stop["id"], plain["id"], false_stop["id"]]
        for ident in ids:
            await eventually(lambda i=ident: texting_status(clean_db, i, "done"))
        registry = await fetch(clean_db, "SELECT phone_number, status, source, reason FROM optout_registry")
        assert registry == [
            {"phone_number": "+15555550104", "status": "opted_out", "source": "texting", "reason": "STOP"}
        ]  # T5: "cancel"/"weekend"/"attend" are not keywords
        contacts = {c["phone"]: c for c in await p.ghl_contacts()}
        assert {"dnc-sms", "sms opted out"} <= set(contacts["+15555550104"]["tags"])
        assert not {"dnc-sms", "sms opted out"} & set(contacts["+15555550101"]["tags"])
        state = await conversations(p)
        bodies = sorted(m["body"] for m in state["messages"])
        assert bodies == sorted(
            [
                "Stop",
                "Hi, is the 10am call still on for Tuesday?",
                "Can we do the weekend instead? I can attend Saturday.",
            ]
        )  # T4: still posted
        assert {m["direction"] for m in state["messages"]} == {"inbound"}
        assert len(state["conversations"]) == 2  # one per contact, reused for the second text
        rows = await fetch(
            clean_db,
            "SELECT texting_message_id, ghl_message_id, ghl_sync_status, "
            "ghl_conversation_id FROM message_mappings ORDER BY texting_message_id",
        )
        assert [r["ghl_sync_status"] for r in rows] == ["synced"] * 3 and all(r["ghl_message_id"] for r in rows)
        mapping = await fetch(
            clean_db, "SELECT ghl_conversation_id FROM contact_mappings WHERE phone_number = '+15555550101'"
        )
        assert mapping[0]["ghl_conversation_id"] == rows[0]["ghl_conversation_id"]

        await jobs.execute(ReplayRequested(event_ids=ids, event_table="texting"))
        for ident in ids:
            await eventually(lambda i=ident: _attempted(clean_db, i, 2))
            await eventually(lambda i=ident: texting_status(clean_db, i, "done"))
        assert len((await conversations(p))["messages"]) == 3  # replays post nothing again


async def _attempted(db: str, event_id: str, n: int) -> bool:
    found = await fetch(db, "SELECT count(*) AS n FROM event_attempts WHERE event_id = $1::uuid", event_id)
    return found[0]["n"] >= n


async def test_t8_a_provider_error_is_recorded_and_not_retried(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, GHL_CONVERSATION_PROVIDER_ID="not-our-provider")
    async with running_pipeline(settings) as p:
        await p.sandbox.post("/_sandbox/ghl/oauth", json={"provider_id": "sandbox-provider"})
        await install(p)
        answer = await send_texting(p, load_fixture("texting/message.received.json"))
        row = await eventually(lambda: texting_status(clean_db, answer["id"], "dead"))
        assert row["attempts"] == 1 and "Incorrect conversationProviderId/type" in row["error_message"]
        [mapping] = await fetch(clean_db, "SELECT ghl_sync_status, ghl_message_id FROM message_mappings")
        assert mapping == {"ghl_sync_status": "failed", "ghl_message_id": None}
        [log] = await fetch(clean_db, "SELECT status, error_message FROM sync_log WHERE rule = 'M-1'")
        assert log["status"] == "error" and "Incorrect conversationProviderId/type" in log["error_message"]
        posts = [c for c in await p.calls("ghl") if c["path"] == "/conversations/messages/inbound"]
        assert len(posts) == 1


async def test_t7_texting_half_echo_of_an_agent_sms_and_status_back_to_ghl(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """A GHL agent's SMS went out through Verity (the M-2 row); Verity's webhooks about it
    must not post it into GHL again, and its delivery status goes back to GHL."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        sent = load_fixture("texting/message.sent.json")
        await execute(
            clean_db,
            """
            INSERT INTO message_mappings (ghl_message_id, verity_message_id, correlation_id, to_number,
                body_sha256, direction, ghl_sync_status)
            VALUES ('ghlAgentMsg1', 'vmsgAgent1', 'ghlAgentMsg1', '+15555550101',
                    encode(sha256(convert_to($1, 'UTF8')), 'hex'), 'outbound', 'synced')""",
            sent["body"],
        )
        echo = await send_texting(p, {**sent, "raw": {"correlationId": "ghlAgentMsg1"}})
        row = await eventually(lambda: texting_status(clean_db, echo["id"], "done"))
        assert (row["outcome"], row["outcome_reason"]) == ("echo", "echo_of_ghl_outbound")
        assert (await conversations(p))["messages"][0] == {
            "id": "ghlAgentMsg1",
            "external": True,
            "status": "delivered",
        }
        [mapping] = await fetch(clean_db, "SELECT texting_message_id FROM message_mappings")
        assert mapping["texting_message_id"] == "txtMsgDemo-0002"
        failed = await send_texting(p, {**load_fixture("texting/message.failed.json"), "messageId": "txtMsgDemo-0002"})
        await eventually(lambda: texting_status(clean_db, failed["id"], "done"))
        [message] = (await conversations(p))["messages"]
        assert message["status"] == "failed" and message["error"]["type"] == "saas"
        unknown = await send_texting(p, {**load_fixture("texting/message.delivered.json"), "messageId": "nope"})
        row = await eventually(lambda: texting_status(clean_db, unknown["id"], "done"))
        assert row["outcome_reason"] == "no_mapping"


async def test_t14_concurrent_refresh_of_an_expiring_token_calls_ghl_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        await execute(clean_db, "UPDATE ghl_oauth_tokens SET expires_at = now() + interval '1 minute'")
        before = await token_calls(p)
        engines = [create_engine(settings) for _ in range(5)]
        workers = [GhlOAuth(settings, engine) for engine in engines]
        try:
            tokens = await asyncio.gather(*(w.access_token(str(settings.ghl_location_id)) for w in workers))
        finally:
            for worker in workers:
                await worker.aclose()
            for engine in engines:
                await engine.dispose()
        assert await token_calls(p) - before == 1
        assert len(set(tokens)) == 1
        [row] = await fetch(clean_db, "SELECT expires_at FROM ghl_oauth_tokens")
        assert row["expires_at"] > datetime.now(UTC) + timedelta(hours=23)


async def test_a_401_refreshes_the_token_once_and_retries(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        await p.sandbox.post("/_sandbox/ghl/oauth", json={"revoke_access": True})  # GHL forgot our token
        answer = await send_texting(p, load_fixture("texting/message.received.json"))
        await eventually(lambda: texting_status(clean_db, answer["id"], "done"))
        assert await token_calls(p) == 2  # the install, then exactly one refresh
        statuses = [c["status"] for c in await p.calls("ghl") if c["path"].startswith("/conversations")]
        assert statuses[0] == 401 and 401 not in statuses[1:]


async def test_m3_texts_link_the_aloware_contact_and_never_create_one(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, TEXTING_SYNC_TO_ALOWARE="true")
    async with running_pipeline(settings) as p:
        await install(p)
        # a person known to Aloware (created there, so the fake Aloware has them)
        await p.sandbox.post(
            "/aloware/api/v1/webhook/forms",
            json={"api_token": "sandbox-aloware-token", "phone_number": "+15555550101", "first_name": "Ada"},
        )
        [alo] = await p.aloware_contacts()
        text = await send_texting(p, load_fixture("texting/message.received.json"))  # from +15555550101
        await eventually(lambda: texting_status(clean_db, text["id"], "done"))
        [row] = await fetch(clean_db, "SELECT aloware_contact_id, ghl_message_id FROM message_mappings")
        assert row["aloware_contact_id"] == alo["id"] and row["ghl_message_id"]
        [log] = await fetch(clean_db, "SELECT status, error_message FROM sync_log WHERE rule = 'M-3'")
        assert (log["status"], log["error_message"]) == ("skipped", "aloware_has_no_message_api")
        stranger = await send_texting(
            p,
            {
                **load_fixture("texting/message.received.json"),
                "messageId": "m3-x",
                "from": "+15555550999",
                "body": "who is this",
            },
        )
        await eventually(lambda: texting_status(clean_db, stranger["id"], "done"))
        assert len(await p.aloware_contacts()) == 1  # never created in Aloware
        assert await fetch(
            clean_db, "SELECT error_message FROM sync_log WHERE rule = 'M-3' AND error_message = 'no-aloware-contact'"
        )
