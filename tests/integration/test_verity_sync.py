"""verity-sync end to end: GHL webhooks forwarded to Verity with a signature that still
verifies (F-1), and agents' SMS sent through Verity exactly once (M-2) with the texting
echo suppressed and the status reported back to GHL (acceptance scenario T7)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from contracts.commands import ReplayRequested
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.jobs import all_in
from tests.support.jobs_rig import execute, fetch, running_jobs
from tests.support.messages import conversations, install, texting_status
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline
from tests.support.verity import send_provider, verity_sends

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}


async def forwards(p: Pipeline) -> list[dict[str, Any]]:
    return [c for c in await p.calls("verity") if c["path"] == "/api/integrations/ghl/webhook"]


async def test_f1_ghl_webhooks_reach_verity_with_the_raw_bytes_and_a_valid_signature(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        created = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL,
            json={"locationId": settings.ghl_location_id, "firstName": "Fwd", "phone": "+15555550901"},
        )
        assert created.status_code == 201

        async def forwarded() -> list[dict[str, Any]]:
            return [
                r
                for r in await fetch(
                    clean_db, "SELECT id, status, payload_raw FROM webhook_events WHERE source = 'ghl'"
                )
                if r["status"] == "done"
            ]

        [row] = await eventually(forwarded)
        state = (await p.sandbox.get("/_sandbox/verity/forwards")).json()
        [sent] = state
        assert sent["body"].encode() == row["payload_raw"]  # the bytes GHL sent, not a re-encoding
        key = load_pem_public_key(settings.ghl_webhook_ed25519_public_key.encode())
        key.verify(base64.b64decode(sent["signature"]), sent["body"].encode())  # still verifies
        assert sent["forwarded"] == "true" and sent["secret_present"] is True
        [log] = await fetch(clean_db, "SELECT rule, status, direction FROM sync_log WHERE rule = 'F-1'")
        assert (log["status"], log["direction"]) == ("success", "ghl_to_verity")


async def test_t7_an_agent_sms_is_sent_once_and_its_echo_is_not_posted_back(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        await install(p)
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "verity", "count": 1, "status": 503, "path_contains": "/send-message"}
        )
        answer, sms = await send_provider(p, load_fixture("ghl-provider-delivery/ProviderOutboundMessage-sms.json"))
        await eventually(lambda: all_in(clean_db, [answer["id"]], "done"))
        [sent] = await verity_sends(p)  # the 503 released the claim; the retry sent it once
        assert sent["body"] == {"to": "+15555550101", "body": sms["message"], "correlationId": sms["messageId"]}
        [row] = await fetch(
            clean_db, "SELECT ghl_message_id, verity_message_id, correlation_id, ghl_sync_status FROM message_mappings"
        )
        assert row["ghl_message_id"] == sms["messageId"] and row["verity_message_id"].startswith("vmsg")

        await jobs.execute(ReplayRequested(event_ids=[answer["id"]], event_table="webhook"))
        await eventually(lambda: _attempts(clean_db, answer["id"], 3))
        await eventually(lambda: all_in(clean_db, [answer["id"]], "done"))
        assert len(await verity_sends(p)) == 1  # a replay never sends twice

        # Verity's webhook about the message it sent for us: an echo, status goes to GHL
        echo = await send_texting(
            p,
            {
                **load_fixture("texting/message.sent.json"),
                "body": sms["message"],
                "raw": {"correlationId": sms["messageId"]},
            },
        )
        row = await eventually(lambda: texting_status(clean_db, echo["id"], "done"))
        assert row["outcome"] == "echo"
        state = await conversations(p)
        assert [m for m in state["messages"] if not m.get("external")] == []  # nothing posted to GHL
        assert state["messages"] == [{"id": sms["messageId"], "external": True, "status": "delivered"}]


async def _attempts(db: str, event_id: str, n: int) -> bool:
    found = await fetch(db, "SELECT count(*) AS n FROM event_attempts WHERE event_id = $1::uuid", event_id)
    return found[0]["n"] >= n


async def test_an_opted_out_number_is_never_sent_to_and_ghl_is_told(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        await execute(
            clean_db,
            "INSERT INTO optout_registry (phone_number, status, source, reason) "
            "VALUES ('+15555550101', 'opted_out', 'texting', 'STOP')",
        )
        answer, _ = await send_provider(p, load_fixture("ghl-provider-delivery/ProviderOutboundMessage-sms.json"))
        await eventually(lambda: all_in(clean_db, [answer["id"]], "done"))
        assert await verity_sends(p) == []
        [row] = await fetch(
            clean_db, "SELECT outcome, outcome_reason FROM webhook_events WHERE id = $1::uuid", answer["id"]
        )
        assert (row["outcome"], row["outcome_reason"]) == ("skipped", "recipient_opted_out")
        [message] = (await conversations(p))["messages"]
        assert message["status"] == "failed" and message["error"]["code"] == "opted_out"


async def test_replays_repeat_no_forward_no_tag_and_no_list_change(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Replay of the F-1, O-2, D-1 and L families: nothing is sent or written twice."""
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        from tests.support.lists import job_run

        seed = await p.ingress.post("/api/admin/agents/seed", headers={"X-DF-ADMIN-SECRET": "admin-secret-1"})
        await job_run(p, seed, "agents-seed")
        await p.sandbox.post("/_sandbox/aloware/lists", json={"name": "DF_UNASSIGNED_NEW_LEADS"})
        created = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL,
            json={"locationId": settings.ghl_location_id, "firstName": "Rep", "phone": "+15555550777"},
        )
        assert created.status_code == 201
        stop = await send_texting(p, {**load_fixture("texting/optout.stop.json"), "from": "+15555550888"})
        dnc = load_fixture("aloware/contact-dnc-updated.json")
        from tests.support.contacts import send_aloware

        dnc_answer = await send_aloware(p, dnc)

        async def everything_landed() -> bool:
            memberships = await fetch(clean_db, "SELECT 1 FROM contact_list_memberships WHERE status = 'active'")
            registry = await fetch(clean_db, "SELECT 1 FROM optout_registry")
            return bool(memberships) and len(registry) == 2 and bool(await forwards(p)) and await _settled(clean_db)

        await eventually(everything_landed, timeout=30)
        ghl_events = [r["id"] for r in await fetch(clean_db, "SELECT id FROM webhook_events WHERE source = 'ghl'")]
        texting_events = [r["id"] for r in await fetch(clean_db, "SELECT id FROM texting_webhook_events")]
        before = await _side_effects(p, clean_db)
        assert before["memberships"] and before["registry"] and before["forwards"]
        await jobs.execute(ReplayRequested(event_ids=[*ghl_events, dnc_answer["id"]]))
        await jobs.execute(ReplayRequested(event_ids=texting_events, event_table="texting"))
        for ident in [*ghl_events, dnc_answer["id"], stop["id"]]:
            await eventually(lambda i=ident: _attempts(clean_db, i, 2))
        await eventually(lambda: _settled(clean_db), timeout=30)
        after = await _side_effects(p, clean_db)
        assert after == before


async def _side_effects(p: Pipeline, db: str) -> dict[str, Any]:
    """What a replay must not change: forwards, vendor writes, the registry and list memberships."""
    return {
        "forwards": len(await forwards(p)),
        "ghl_writes": len([c for c in await p.calls("ghl") if c["method"] != "GET"]),
        "aloware_writes": len([c for c in await p.calls("aloware") if c["method"] == "POST"]),
        "registry": await fetch(db, "SELECT phone_number, status, source FROM optout_registry ORDER BY phone_number"),
        "memberships": await fetch(
            db, "SELECT contact_id, list_key, status FROM contact_list_memberships ORDER BY contact_id"
        ),
    }


async def _settled(db: str) -> bool:
    rows = await fetch(
        db,
        "SELECT count(*) AS n FROM webhook_events WHERE status NOT IN ('done', 'dead') "
        "UNION ALL SELECT count(*) FROM texting_webhook_events WHERE status NOT IN ('done', 'dead')",
    )
    return all(r["n"] == 0 for r in rows)
