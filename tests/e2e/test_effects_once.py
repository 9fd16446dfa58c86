"""Irreversible vendor writes happen once (ARCHITECTURE.md §3 invariant 2; issue #14 item 4):
only the attempt that inserted the effect claim writes, and a write whose answer was lost
ends in an operator-visible state instead of being sent again."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from contracts.commands import ReplayRequested
from contracts.envelope import AuthInfo, WebhookEvent
from contracts.subjects import EntityType, Source
from services.domain import effects
from services.infra.db.session import create_engine
from services.infra.delivery import Outcome
from services.infra.errors import RetryLater
from services.sandbox.app import create_sandbox_app
from services.verity_sync.service import SEND_PATH, VeritySync
from tests.conftest import load_fixture
from tests.support.activity import notes
from tests.support.contacts import send_aloware
from tests.support.ingress_rig import serving
from tests.support.jobs_rig import execute, fetch, running_jobs
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline
from tests.support.verity import send_provider

SMS = "ghl-provider-delivery/ProviderOutboundMessage-sms.json"


async def send_calls(sandbox: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every send-message request Verity received, whatever it answered."""
    calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "verity"})).json()
    return [c for c in calls if c["path"] == SEND_PATH]


async def finished(db: str, event_id: str) -> dict[str, Any] | None:
    found = await fetch(
        db, "SELECT status, error_message, received_at FROM webhook_events WHERE id = $1::uuid", event_id
    )
    return found[0] if found and found[0]["status"] in ("done", "dead") else None


async def attempts_at_least(db: str, event_id: str, n: int) -> bool:
    found = await fetch(db, "SELECT count(*) AS n FROM event_attempts WHERE event_id = $1::uuid", event_id)
    return int(found[0]["n"]) >= n


async def claim_row(db: str, key: str) -> dict[str, Any] | None:
    found = await fetch(db, "SELECT state, vendor_id, detail FROM effect_claims WHERE key = $1", key)
    return found[0] if found else None


def provider_event(payload: dict[str, Any]) -> WebhookEvent:
    return WebhookEvent(
        source=Source.GHL_PROVIDER,
        event_name="SMS",
        event_type="provider_outbound_sms",
        canonical_type="provider_outbound_sms",
        entity_type=EntityType.PROVIDER_MESSAGE,
        entity_id=payload["messageId"],
        dedupe_key=f"ghl_provider:{payload['messageId']}",
        auth=AuthInfo(method="ed25519", verified=True),
        payload=payload,
    )


async def test_two_concurrent_deliveries_of_one_agent_sms_send_it_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Two replicas run the same delivery at the same moment (a sweep re-drive of a lagging
    event, a redelivery after a lost heartbeat): one sends, the other waits for its claim."""
    settings = pipeline_settings(base_env, tmp_path)
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(
            serving(create_sandbox_app(settings), "/_sandbox/calls", port=settings.sandbox_port)
        )
        sandbox = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        await sandbox.post(
            "/_sandbox/faults",
            json={"vendor": "verity", "count": 2, "latency_ms": 300, "path_contains": "/send-message"},
        )
        replicas = []
        for _ in range(2):
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
            replica = VeritySync(settings, engine, None)
            stack.push_async_callback(replica.aclose)
            replicas.append(replica)
        payload = {**load_fixture(SMS), "messageId": "ghlMsgConcurrent0001"}
        event = provider_event(payload)

        results = await asyncio.gather(*(r.handle(event, 1) for r in replicas), return_exceptions=True)

        assert len(await send_calls(sandbox)) == 1
        assert Outcome("applied") in results
        [waited] = [r for r in results if r != Outcome("applied")]
        assert isinstance(waited, RetryLater) and waited.counts_as_attempt is False
        again = await replicas[1].handle(event, 2)  # its retry finds the SMS sent
        assert again == Outcome("skipped", "already_sent")
        assert len(await send_calls(sandbox)) == 1
        row = await claim_row(clean_db, "m2:ghlMsgConcurrent0001")
        assert row is not None and row["state"] == "done" and row["vendor_id"].startswith("vmsg")


async def test_a_502_after_the_sms_request_is_never_resent_and_waits_for_an_operator(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        # Verity sends the SMS, then its gateway answers 502: did the person get it? yes
        await p.sandbox.post(
            "/_sandbox/faults",
            json={"vendor": "verity", "count": 1, "status": 502, "after": True, "path_contains": "/send-message"},
        )
        answer, sms = await send_provider(p, load_fixture(SMS))
        row = await eventually(lambda: finished(clean_db, answer["id"]))
        assert row["status"] == "dead" and row["error_message"].startswith("outcome_unknown:")
        assert len(await send_calls(p.sandbox)) == 1
        key = f"m2:{sms['messageId']}"
        claim = await claim_row(clean_db, key)
        assert claim is not None and claim["state"] == "unknown"
        [delivery] = await fetch(
            clean_db,
            "SELECT status, last_error FROM event_deliveries WHERE event_id = $1::uuid AND consumer = 'verity-sync'",
            answer["id"],
        )
        assert delivery["status"] == "dead" and delivery["last_error"].startswith("outcome_unknown:")

        # a replay does not resend while the claim is unknown
        await jobs.execute(ReplayRequested(event_ids=[answer["id"]], event_table="webhook"))
        await eventually(lambda: attempts_at_least(clean_db, answer["id"], 2))
        row = await eventually(lambda: finished(clean_db, answer["id"]))
        assert row["status"] == "dead" and row["error_message"].startswith("outcome_unknown:")
        assert len(await send_calls(p.sandbox)) == 1
        assert (await claim_row(clean_db, key) or {}).get("state") == "unknown"

        # the operator checked Verity and found it sent: recorded, and a replay finishes quietly
        engine = create_engine(settings)
        try:
            async with engine.begin() as conn:
                assert [u["key"] for u in await effects.list_unknown(conn)] == [key]
                assert await effects.resolve(conn, key, "sent", vendor_id="vmsg-checked-by-ops")
        finally:
            await engine.dispose()
        await jobs.execute(ReplayRequested(event_ids=[answer["id"]], event_table="webhook"))
        await eventually(lambda: attempts_at_least(clean_db, answer["id"], 3))
        row = await eventually(lambda: finished(clean_db, answer["id"]))
        assert row["status"] == "done"
        assert len(await send_calls(p.sandbox)) == 1


async def test_a_call_note_is_posted_once_when_its_answer_is_lost_and_the_call_has_no_time(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """GHL records the note and answers 504; the call webhook carries no ``created_at``, so
    the note's time is the event's ``received_at``, the same on every attempt."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        await p.sandbox.post(
            "/_sandbox/faults",
            json={"vendor": "ghl", "count": 1, "status": 504, "after": True, "path_contains": "/notes"},
        )
        payload = load_fixture("aloware/call-disposed.json")
        payload["body"]["id"] = "9100077"
        del payload["body"]["created_at"]
        call = await send_aloware(p, payload)
        row = await eventually(lambda: finished(clean_db, call["id"]))
        assert row["status"] == "done", row["error_message"]
        [contact] = await p.ghl_contacts()
        [note] = await notes(p, contact["id"])
        received: datetime = row["received_at"]
        assert note.startswith(f"Call Made on {received.isoformat()} (3m 5s)")
        claim = await claim_row(clean_db, "note:aloware:call:9100077")
        assert claim is not None and claim["state"] == "done" and claim["vendor_id"].startswith("note")

        await jobs.execute(ReplayRequested(event_ids=[call["id"]]))
        await eventually(lambda: attempts_at_least(clean_db, call["id"], 2))
        await eventually(lambda: finished(clean_db, call["id"]))
        assert await notes(p, contact["id"]) == [note]
        posts = [c for c in await p.calls("ghl") if c["method"] == "POST" and c["path"].endswith("/notes")]
        assert len(posts) == 1


async def test_a_lost_answer_to_a_conversation_message_posts_it_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    from tests.support.activity import send_texting
    from tests.support.messages import conversations, install, texting_status

    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        await p.sandbox.post(
            "/_sandbox/faults",
            json={
                "vendor": "ghl",
                "count": 1,
                "status": 502,
                "after": True,
                "path_contains": "/conversations/messages/inbound",
            },
        )
        answer = await send_texting(p, load_fixture("texting/message.received.json"))
        row = await eventually(lambda: texting_status(clean_db, answer["id"], "done", "dead"))
        assert row["status"] == "done", row["error_message"]
        [message] = (await conversations(p))["messages"]
        [mapping] = await fetch(clean_db, "SELECT ghl_message_id, ghl_sync_status FROM message_mappings")
        assert mapping == {"ghl_message_id": message["id"], "ghl_sync_status": "synced"}
        posts = [c for c in await p.calls("ghl") if c["path"] == "/conversations/messages/inbound"]
        assert len(posts) == 1


async def test_an_operator_lists_and_resolves_an_unknown_write_from_the_cli(clean_db: str, tmp_path: Path) -> None:
    """`dfm effects list` shows a write whose outcome is unknown; `resolve --not-sent` frees
    it for the next replay; resolving it again says there is nothing to resolve (exit 1)."""
    import os
    import subprocess
    import sys

    await execute(
        clean_db,
        "INSERT INTO effect_claims (key, effect, state, token, detail, expires_at) "
        "VALUES ('m2:ghlMsg-cli', 'agent_sms', 'unknown', gen_random_uuid(), "
        "'Verity 502 after the send', now())",
    )
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": clean_db, "DFM_DATA_DIR": str(tmp_path)}

    def dfm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "effects", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = await asyncio.to_thread(dfm, "list")
    assert listed.returncode == 0, listed.stderr
    [claim] = json.loads(listed.stdout)
    assert claim["key"] == "m2:ghlMsg-cli" and claim["effect"] == "agent_sms"
    resolved = await asyncio.to_thread(dfm, "resolve", "m2:ghlMsg-cli", "--not-sent")
    assert resolved.returncode == 0, resolved.stderr
    assert await fetch(clean_db, "SELECT key FROM effect_claims") == []
    again = await asyncio.to_thread(dfm, "resolve", "m2:ghlMsg-cli", "--not-sent")
    assert again.returncode == 1 and "no unknown or claimed effect" in again.stderr


async def test_a_ghl_503_on_a_note_is_a_refusal_and_the_retry_posts_it_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """503 (like 429) says GHL did not take the request: the claim is released and the retry
    writes, instead of the delivery ending outcome_unknown for an operator."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "ghl", "count": 1, "status": 503, "path_contains": "/notes"}
        )
        payload = load_fixture("aloware/call-disposed.json")
        payload["body"]["id"] = "9100078"
        call = await send_aloware(p, payload)
        row = await eventually(lambda: finished(clean_db, call["id"]))
        assert row["status"] == "done", row["error_message"]
        [contact] = await p.ghl_contacts()
        assert len(await notes(p, contact["id"])) == 1
        statuses = [c["status"] for c in await p.calls("ghl") if c["method"] == "POST" and c["path"].endswith("/notes")]
        assert statuses == [503, 201]
