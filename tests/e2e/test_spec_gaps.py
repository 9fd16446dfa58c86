"""Spec rules that held in the code but no test asserted (issue #16, "Tests that are missing
today"; reviews/spec-coverage.md §"Weakest areas"). Each test goes through the real entry
point (the ingress over HTTP, the sync consumers on a private nats-server, the sandbox
vendors over loopback) and names the rule it checks; each says in a comment how it fails
when the behaviour breaks."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.infra.delivery import backoff_delay
from services.infra.settings import Settings
from services.infra.signing import hmac_hex
from tests.conftest import TEST_SECRETS, load_fixture
from tests.support.activity import send_texting
from tests.support.admin import ADMIN
from tests.support.contacts import aloware_contact, send_aloware
from tests.support.ingress_rig import running_ingress, running_recorder, wait_for_row
from tests.support.jobs_rig import execute, fetch, running_jobs
from tests.support.lists import create_contact, members, memberships, setup_lists
from tests.support.lists_optout import send_ghl
from tests.support.messages import conversations, install, texting_status
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline

VERITY = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]
JOBS = {"X-DF-Jobs-Secret": TEST_SECRETS["X_DF_JOBS_SECRET"]}
WORKFLOW_TOKEN = TEST_SECRETS["GHL_WORKFLOW_WEBHOOK_TOKEN"].split(",")[0]


def h16(text: str) -> str:
    """spec/inbound.md §2.7, written out again here (not imported) so the test checks the formula."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def canon(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def env_settings(base_env: dict[str, str], **overrides: str) -> Settings:
    return Settings(**{k.lower(): v for k, v in {**base_env, **overrides}.items()})


@asynccontextmanager
async def ingress_at(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The ingress and the recorder (rows in PostgreSQL), no sync consumers."""
    async with (
        running_recorder(settings),
        running_ingress(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        yield client


def texting_signed(body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "x-texting-signature": hmac_hex(VERITY, body)}


def broadcast_signed(body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "x-broadcast-signature": hmac_hex(VERITY, body)}


# --- 1. dedupe keys (spec/inbound.md §2.5, §2.6, §2.7) -------------------------------------------


async def test_texting_events_without_a_message_id_are_keyed_by_their_body(
    base_env: dict[str, str], clean_db: str
) -> None:
    """§2.7 texting row [F]: with no ``messageId`` the entity id inside the key is
    ``h16(canon(body))``, not the conversation id, so two different id-less, timestamp-less
    texts of one conversation are two events, and the same body twice is one. Fails if the
    key used the conversation id (the second, different text would be answered duplicate)
    or anything other than the formula (the exact key compare)."""
    async with ingress_at(env_settings(base_env)) as ingress:
        first = {
            "eventType": "message.received",
            "conversationId": "verityChatNoId-1",
            "from": "+15555550171",
            "to": "+15555550100",
            "body": "first, no id, no time",
        }
        other = {**first, "body": "second, no id, no time"}
        raw = json.dumps(first).encode()
        a = (await ingress.post("/api/webhooks/texting", content=raw, headers=texting_signed(raw))).json()
        again = (await ingress.post("/api/webhooks/texting", content=raw, headers=texting_signed(raw))).json()
        raw_other = json.dumps(other).encode()
        b = (await ingress.post("/api/webhooks/texting", content=raw_other, headers=texting_signed(raw_other))).json()
        assert a["status"] == "accepted"
        assert (again["status"], again["id"]) == ("duplicate", a["id"])
        assert b["status"] == "accepted" and b["id"] != a["id"]
        for sent, answer in ((first, a), (other, b)):
            row = await wait_for_row(clean_db, "texting_webhook_events", answer["id"])
            key_entity = h16(canon(sent))
            assert row["dedupe_key"] == (
                f"texting:message.received:{key_entity}:{h16(f'texting:message.received:{key_entity}:')}"
            )
            assert row["entity_id"] == "verityChatNoId-1"  # §2.5: the stored entity id is still the conversation


async def test_broadcast_events_without_a_timestamp_are_keyed_by_the_minute_received(
    base_env: dict[str, str], clean_db: str
) -> None:
    """§2.6/§2.7 broadcast row [F]: a missing ``timestamp`` is replaced by ``received_at``
    truncated to the minute, so the same body twice in a minute is a duplicate and a later
    minute's is a new event (the original accepted one per broadcast and type, ever). Fails
    if the empty timestamp were hashed (exact key compare against the row's received_at
    minute) or if the same body within a minute were accepted twice."""
    async with ingress_at(env_settings(base_env)) as ingress:
        body = {"broadcastId": "brdNoStamp-0001", "eventType": "analytics_updated"}
        raw = json.dumps(body).encode()
        a = (await ingress.post("/api/webhooks/broadcast", content=raw, headers=broadcast_signed(raw))).json()
        again = (await ingress.post("/api/webhooks/broadcast", content=raw, headers=broadcast_signed(raw))).json()
        completed = {**body, "eventType": "broadcast_completed"}
        raw_c = json.dumps(completed).encode()
        c = (await ingress.post("/api/webhooks/broadcast", content=raw_c, headers=broadcast_signed(raw_c))).json()
        assert a["status"] == "accepted" and c["status"] == "accepted" and c["id"] != a["id"]
        row = await wait_for_row(clean_db, "broadcast_webhook_events", a["id"])
        minute = row["received_at"].astimezone(UTC).replace(second=0, microsecond=0).isoformat()
        inner = h16(f"broadcast:brdNoStamp-0001:analytics_updated:{minute}")
        assert row["dedupe_key"] == f"broadcast:brdNoStamp-0001:analytics_updated:{inner}"
        if again["status"] == "accepted":  # only when the two posts straddled a minute boundary
            second = await wait_for_row(clean_db, "broadcast_webhook_events", again["id"])
            assert second["received_at"].replace(second=0, microsecond=0) != row["received_at"].replace(
                second=0, microsecond=0
            )
        else:
            assert (again["status"], again["id"]) == ("duplicate", a["id"])
        # a timestamp, when present, is the key's and not the minute's
        stamped = {**body, "timestamp": "2025-03-10T18:00:00Z"}
        raw_s = json.dumps(stamped).encode()
        s = (await ingress.post("/api/webhooks/broadcast", content=raw_s, headers=broadcast_signed(raw_s))).json()
        row_s = await wait_for_row(clean_db, "broadcast_webhook_events", s["id"])
        assert row_s["dedupe_key"].endswith(h16("broadcast:brdNoStamp-0001:analytics_updated:2025-03-10T18:00:00Z"))


# --- 3. Aloware Bearer and the plain-secret switches (§1.6, §1.7, §1.8) --------------------------


async def test_aloware_bearer_token_is_accepted_only_when_configured_and_equal(
    base_env: dict[str, str], clean_db: str
) -> None:
    """§1.6 [N]: ``Authorization: Bearer <ALOWARE_WEBHOOK_BEARER_TOKEN>`` when the variable is
    set (rotation: every listed token). Fails if a Bearer were refused when configured,
    accepted when wrong, or accepted with the variable unset."""
    body = json.dumps(aloware_contact(71)).encode()
    with_bearer = env_settings(base_env, ALOWARE_WEBHOOK_BEARER_TOKEN="alo-bearer-new,alo-bearer-old")
    async with ingress_at(with_bearer) as ingress:
        for token in ("alo-bearer-new", "alo-bearer-old"):
            ok = await ingress.post("/api/webhooks/aloware", content=body, headers={"authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.json()["status"] in ("accepted", "duplicate"), ok.text
        wrong = await ingress.post(
            "/api/webhooks/aloware", content=body, headers={"authorization": "Bearer alo-bearer-guess"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"] == "bad_credentials"
    async with ingress_at(env_settings(base_env)) as ingress:  # the variable unset: no Bearer at all
        refused = await ingress.post(
            "/api/webhooks/aloware", content=body, headers={"authorization": "Bearer alo-bearer-new"}
        )
        assert refused.status_code == 401 and refused.json()["error"] == "bad_credentials"


@pytest.mark.parametrize(
    ("path", "plain_header", "switch", "signed"),
    [
        ("/api/webhooks/texting", "x-texting-secret", "TEXTING_ACCEPT_PLAIN_SECRET", texting_signed),
        ("/api/webhooks/broadcast", "x-df-broadcast-secret", "BROADCAST_ACCEPT_PLAIN_SECRET", broadcast_signed),
    ],
)
async def test_the_plain_secret_header_follows_its_switch_and_the_signature_never_does(
    base_env: dict[str, str], clean_db: str, path: str, plain_header: str, switch: str, signed: Any
) -> None:
    """§1.7/§1.8: the plain shared-secret header is accepted while the source's switch is
    ``true`` and refused when ``false``; the HMAC signature is accepted either way. Fails if
    a switch were ignored (either direction) or switched the signature off too."""

    def body(n: int) -> bytes:
        if "texting" in path:
            return json.dumps(
                {
                    **load_fixture("texting/message.received.json"),
                    "messageId": f"plain-{switch}-{n}-{uuid.uuid4().hex[:6]}",
                }
            ).encode()
        return json.dumps(
            {
                "broadcastId": f"brdPlain-{uuid.uuid4().hex[:6]}",
                "eventType": "analytics_updated",
                "timestamp": datetime.now(UTC).isoformat(),
            }
        ).encode()

    for on in ("true", "false"):
        async with ingress_at(env_settings(base_env, **{switch: on})) as ingress:
            raw = body(1)
            plain = await ingress.post(
                path, content=raw, headers={"content-type": "application/json", plain_header: VERITY}
            )
            if on == "true":
                assert plain.status_code == 200 and plain.json()["status"] == "accepted", plain.text
            else:
                assert plain.status_code == 401, plain.text
                assert plain.json()["status"] == "rejected"
            raw = body(2)
            hmac_ok = await ingress.post(path, content=raw, headers=signed(raw))
            assert hmac_ok.status_code == 200 and hmac_ok.json()["status"] == "accepted", hmac_ok.text


# --- 11. texting admin masking (§4.6) -------------------------------------------------------------


async def test_texting_admin_list_masks_numbers_and_hides_the_body_unless_asked(
    base_env: dict[str, str], clean_db: str
) -> None:
    """§4.6 ``GET /api/admin/texting/events``: numbers masked to their first 4 characters +
    ``***``; ``body`` returned only with ``includeBody=true``. Fails if a full number or the
    text appeared without ``includeBody``, or the body were missing with it."""
    async with ingress_at(env_settings(base_env)) as ingress:
        sent = {
            **load_fixture("texting/message.received.json"),
            "messageId": "mask-0001",
            "from": "+15555550181",
            "to": "+15555550182",
            "body": "private words here",
        }
        raw = json.dumps(sent).encode()
        answer = (await ingress.post("/api/webhooks/texting", content=raw, headers=texting_signed(raw))).json()
        await wait_for_row(clean_db, "texting_webhook_events", answer["id"])
        listed = await ingress.get("/api/admin/texting/events", headers=ADMIN)
        assert listed.status_code == 200, listed.text
        [event] = listed.json()["events"]
        assert (event["id"], event["fromNumber"], event["toNumber"]) == (answer["id"], "+155***", "+155***")
        assert "body" not in event
        for secret in ("+15555550181", "+15555550182", "private words"):
            assert secret not in listed.text
        with_body = await ingress.get("/api/admin/texting/events", params={"includeBody": "true"}, headers=ADMIN)
        [event] = with_body.json()["events"]
        assert event["body"] == "private words here" and event["fromNumber"] == "+155***"
        assert "+15555550181" not in with_body.text


# --- 12. the retry back-off (§4.3) ----------------------------------------------------------------


def test_backoff_is_base_times_two_to_the_attempts_made_capped_with_twenty_percent_jitter() -> None:
    """§4.3: the delay after the n-th attempt (before attempt n+1) is
    ``min(RETRY_BASE_DELAY_S · 2^(n−1), RETRY_MAX_DELAY_S)`` ±20 %: with the defaults 60, 120,
    240, 480, 960, 1920, then 3600. Over many draws every delay lies within the exact ±20 %
    band and the draws reach both ends of it. Fails if the doubling, the cap, the jitter
    width, or the jitter itself (all draws equal) changed."""
    settings = Settings(retry_base_delay_s=60, retry_max_delay_s=3600)
    nominal = {1: 60, 2: 120, 3: 240, 4: 480, 5: 960, 6: 1920, 7: 3600, 8: 3600, 11: 3600}
    for attempt, expected in nominal.items():
        draws = [backoff_delay(settings, attempt) for _ in range(4000)]
        assert all(0.8 * expected <= d <= 1.2 * expected for d in draws), (attempt, min(draws), max(draws))
        assert min(draws) < 0.81 * expected and max(draws) > 1.19 * expected, (attempt, min(draws), max(draws))
        assert abs(sum(draws) / len(draws) - expected) < 0.02 * expected  # centred on the nominal delay


# --- 2. the W4 alias (§1.6) -----------------------------------------------------------------------


async def test_an_event_through_the_w4_alias_reaches_the_consumers_like_w3(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """§1.6 [F]: ``/api/integrations/aloware/webhook`` is an exact alias of W3: same auth,
    the event stored, queued and synced to GHL (the original's W4 never queued). Fails if
    W4 answered without publishing, or classified differently (no GHL contact, another
    canonical type)."""
    from tests.support.contacts import ALOWARE_AUTH, done

    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        refused = await p.ingress.post("/api/integrations/aloware/webhook", content=json.dumps(aloware_contact(72)))
        assert refused.status_code == 401
        via_w4 = await p.ingress.post(
            "/api/integrations/aloware/webhook", content=json.dumps(aloware_contact(72)), headers=ALOWARE_AUTH
        )
        assert via_w4.status_code == 200 and via_w4.json()["status"] == "accepted", via_w4.text
        via_w3 = await send_aloware(p, aloware_contact(73))
        rows = {}
        for name, ident in (("w4", via_w4.json()["id"]), ("w3", via_w3["id"])):
            rows[name] = await eventually(lambda i=ident: done(clean_db, i))
        for row in rows.values():
            assert (row["status"], row["outcome"], row["source"], row["canonical_type"]) == (
                "done",
                "applied",
                "aloware",
                "contact.created",
            )
        phones = sorted(c["phone"] for c in await p.ghl_contacts())
        assert phones == ["+15555550072", "+15555550073"]


# --- 4. GHL DND → opted out (O-7) -----------------------------------------------------------------


async def test_ghl_global_dnd_opts_the_number_out_in_the_registry(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """O-7 (spec/outbound.md): a ``ContactDndUpdate`` re-reads the contact; ``dnd=true`` →
    registry ``opted_out``, source ``ghl``, reason ``GHL DND`` (tests/integration/test_lists_optout.py
    covers ``dndSettings.SMS`` with the lists on; this is the global flag with them off).
    Fails if the DND event left the registry alone or recorded another source/reason."""
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        contact = await create_contact(p, firstName="Dora", phone="+15555550191")
        changed = await p.sandbox.patch(f"/_sandbox/ghl/contacts/{contact['id']}", json={"dnd": True})
        assert changed.status_code == 200, changed.text
        assert changed.json()["dnd"] is True
        await send_ghl(p, "ContactDndUpdate", changed.json())  # GHL's webhook, signed as GHL signs it

        async def registry() -> list[dict[str, Any]]:
            return await fetch(
                clean_db, "SELECT status, source, reason FROM optout_registry WHERE phone_number = '+15555550191'"
            )

        [row] = await eventually(registry)
        assert (row["status"], row["source"], row["reason"]) == ("opted_out", "ghl", "GHL DND")


# --- 5. each sync-direction flag off (spec/outbound.md §1.0, §1.1) -------------------------------


async def _delivery(db: str, event_id: str, consumer: str) -> dict[str, Any] | None:
    found = await fetch(
        db,
        "SELECT * FROM event_deliveries WHERE event_id = $1::uuid AND consumer = $2 AND status = 'done'",
        event_id,
        consumer,
    )
    return found[0] if found else None


async def test_aloware_to_ghl_off_writes_nothing_to_ghl_and_says_why(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """§1.1 aloware row: with ``SYNC_ALOWARE_CONTACTS_TO_GHL=false`` an Aloware contact event
    is ``skipped`` with ``aloware_contact_event_ignored_source_of_truth_is_ghl`` and GHL sees
    no request. Fails if the flag were ignored (a GHL contact appears) or the reason differed."""
    settings = pipeline_settings(base_env, tmp_path, SYNC_ALOWARE_CONTACTS_TO_GHL="false")
    async with running_pipeline(settings) as p:
        sent = await send_aloware(p, aloware_contact(74))
        row = await eventually(lambda: _done_row(clean_db, "webhook_events", sent["id"]))
        assert (row["outcome"], row["outcome_reason"]) == (
            "skipped",
            "aloware_contact_event_ignored_source_of_truth_is_ghl",
        )
        assert await p.ghl_contacts() == []
        assert [c for c in await p.calls("ghl") if c["path"].startswith("/contacts")] == []


async def test_ghl_to_aloware_off_writes_nothing_to_aloware_and_says_why(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """§1.1 ghl row: with ``SYNC_GHL_CONTACTS_TO_ALOWARE=false`` a GHL ContactCreate makes no
    Aloware contact; aloware-sync's delivery is ``skipped`` ``ghl_contact_sync_disabled``.
    Fails if CG still ran (an Aloware contact appears, an Aloware write is called)."""
    settings = pipeline_settings(base_env, tmp_path, SYNC_GHL_CONTACTS_TO_ALOWARE="false")
    async with running_pipeline(settings) as p:
        await create_contact(p, firstName="Gil", phone="+15555550175")  # the sandbox sends ContactCreate

        async def handled() -> dict[str, Any] | None:
            rows = await fetch(
                clean_db, "SELECT id FROM webhook_events WHERE canonical_type = 'contact.created' AND status = 'done'"
            )
            return await _delivery(clean_db, str(rows[0]["id"]), "aloware-sync") if rows else None

        delivery = await eventually(handled)
        assert (delivery["outcome"], delivery["outcome_reason"]) == ("skipped", "ghl_contact_sync_disabled")
        assert await p.aloware_contacts() == []
        writes = [
            c
            for c in await p.calls("aloware")
            if c["method"] in ("POST", "PUT", "PATCH", "DELETE")
            and "search" not in c["path"]
            and "lookup" not in c["path"]
        ]
        assert writes == [], writes


async def test_texting_to_aloware_is_off_by_default(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    """spec/outbound.md §0.1, §1.1 texting row: ``TEXTING_SYNC_TO_ALOWARE`` unset = off, so
    M-3 does not run: aloware-sync's delivery is ``skipped`` ``texting_sync_to_aloware_disabled``,
    Aloware is not asked and no message mapping links the Aloware contact (the text still
    reaches GHL). Fails if the default were on (test_messages' M-3 test shows the link then)."""
    settings = pipeline_settings(base_env, tmp_path)
    assert settings.texting_sync_to_aloware is False
    async with running_pipeline(settings) as p:
        await install(p)
        await p.sandbox.post(
            "/aloware/api/v1/webhook/forms",
            json={"api_token": "sandbox-aloware-token", "phone_number": "+15555550101", "first_name": "Ada"},
        )
        before = len(await p.calls("aloware"))
        text = await send_texting(p, load_fixture("texting/message.received.json"))  # from +15555550101
        await eventually(lambda: texting_status(clean_db, text["id"], "done"))
        delivery = await eventually(lambda: _delivery(clean_db, text["id"], "aloware-sync"))
        assert (delivery["outcome"], delivery["outcome_reason"]) == ("skipped", "texting_sync_to_aloware_disabled")
        [row] = await fetch(clean_db, "SELECT aloware_contact_id, ghl_message_id FROM message_mappings")
        assert row["aloware_contact_id"] is None and row["ghl_message_id"]
        assert len(await p.calls("aloware")) == before
        assert not await fetch(clean_db, "SELECT 1 FROM sync_log WHERE rule = 'M-3'")


async def _done_row(db: str, table: str, event_id: str) -> dict[str, Any] | None:
    found = await fetch(db, f"SELECT * FROM {table} WHERE id = $1::uuid AND status IN ('done', 'dead')", event_id)
    return found[0] if found else None


# --- 6. outbound texts that are not echoes (M-1, spec/inbound.md §2.5) -----------------------------


async def test_an_outbound_text_we_did_not_send_reaches_ghl_as_an_outbound_message(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """§2.5 ``message.sent`` → message sync to GHL as outbound (contact by ``to``), unless it
    is the echo of a GHL agent's own SMS (M-1.2; test_messages covers the echo half). A text
    Verity sent on its own (a broadcast, an agent in Verity) has no M-2 row: it is posted.
    Fails if every outbound text were treated as an echo, or posted as inbound / to ``from``."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        sent = await send_texting(p, {**load_fixture("texting/message.sent.json"), "messageId": "notOurs-0001"})
        row = await eventually(lambda: texting_status(clean_db, sent["id"], "done", "dead"))
        assert (row["status"], row["outcome"]) == ("done", "applied"), row
        state = await conversations(p)
        [message] = state["messages"]
        assert message["direction"] == "outbound"
        assert message["body"] == "Yes Ada, talk to you Tuesday at 10am."
        contacts = {c["id"]: c for c in await p.ghl_contacts()}
        [conversation] = state["conversations"]
        assert contacts[conversation["contactId"]]["phone"] == "+15555550101"  # the recipient, `to`
        [mapping] = await fetch(clean_db, "SELECT texting_message_id, direction, ghl_message_id FROM message_mappings")
        assert (mapping["texting_message_id"], mapping["direction"]) == ("notOurs-0001", "outbound")
        assert mapping["ghl_message_id"]


# --- 7. a family-C tag.added end to end (spec/outbound.md §1.1, L-1/L-2) ---------------------------


async def test_a_workflow_tag_added_puts_the_contact_on_its_agents_list(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """§1.1 ghl ``tag.added`` row: L-1 → L-2 (no reassignment step). The family-C body of a GHL
    workflow (tests/fixtures/webhooks/ghl/tag.added.json, token auth) names only the contact
    and the tag; aloware-sync creates the Aloware contact first (L-2 step 2, no mapping yet)
    and adds it to the agent's CALL_NOW list, nothing else. Fails if family C were not
    routed to the list rules, the tag name not extracted, or the contact not created first."""
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true", DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_CHRIS_CALL_NOW", "DF_CHRIS_NEW_LEADS")
        contact = await create_contact(p, firstName="Grace", phone="+15555550176", assignedTo="sbxUserChris")
        body = {**load_fixture("ghl/tag.added.json"), "contactId": contact["id"]}
        answer = await p.ingress.post(
            "/api/webhooks/ghl",
            params={"token": WORKFLOW_TOKEN},
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        row = await eventually(lambda: _done_row(clean_db, "webhook_events", answer.json()["id"]))
        assert (row["status"], row["canonical_type"], row["entity_id"]) == ("done", "tag.added", contact["id"])
        await eventually(lambda: _active(clean_db, ("CHRIS", "CALL_NOW")))
        [alo] = await p.aloware_contacts()
        assert alo["phone_number"] == "+15555550176"
        lists = await members(p)
        assert lists["DF_CHRIS_CALL_NOW"] == [alo["id"]] and lists["DF_CHRIS_NEW_LEADS"] == []
        assert set(await memberships(clean_db)) == {("CHRIS", "CALL_NOW")}


async def _active(db: str, key: tuple[str, str]) -> bool:
    return (await memberships(db)).get(key) == "active"


# --- 8. an Aloware id conflict on a mapping (CA-7) -------------------------------------------------


async def test_a_second_aloware_id_for_a_mapped_ghl_contact_is_a_mapping_conflict(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """CA-7 / §7 contact_mappings (spec/outbound.md): a different non-null Aloware id for a
    GHL contact already mapped is a conflict: the event ends ``dead`` with
    ``mapping_conflict`` and the mapping is not overwritten. Two Aloware contacts with one
    phone number: the second finds the first's GHL contact by phone. Fails if the mapping
    were overwritten (COALESCE lost) or the event ended done / retried without the reason."""
    from tests.support.contacts import done

    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        first = await send_aloware(p, aloware_contact(77))
        assert (await eventually(lambda: done(clean_db, first["id"])))["outcome"] == "applied"
        [ghl] = await p.ghl_contacts()
        twin = aloware_contact(77, first="Twin")
        twin["body"].update(id="8999977", email="twin77@example.com")
        second = await send_aloware(p, twin)
        row = await eventually(lambda: done(clean_db, second["id"]))
        assert (row["status"], row["attempts"]) == ("dead", 1), row  # permanent: retrying cannot resolve it
        assert row["error_message"].startswith("mapping_conflict"), row["error_message"]
        assert ghl["id"] in row["error_message"] and "8999977" in row["error_message"]
        mappings = await fetch(clean_db, "SELECT ghl_contact_id, aloware_contact_id FROM contact_mappings")
        assert mappings == [{"ghl_contact_id": ghl["id"], "aloware_contact_id": "8000077"}]


async def test_a_mapping_conflict_writes_its_sync_log_error_row(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """CA-7: ``log error mapping_conflict`` — the sync-error-rate alert counts these rows (the
    failed attempt's row comes from the delivery ledger, issue #16 item 9)."""
    from tests.support.contacts import done

    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        first = await send_aloware(p, aloware_contact(79))
        await eventually(lambda: done(clean_db, first["id"]))
        twin = aloware_contact(79, first="Twin")
        twin["body"].update(id="8999979", email="twin79@example.com")
        second = await send_aloware(p, twin)
        assert (await eventually(lambda: done(clean_db, second["id"])))["status"] == "dead"
        logged = await fetch(
            clean_db, "SELECT status, error_message FROM sync_log WHERE correlation_id = $1", second["id"]
        )
        assert [(r["status"], r["error_message"][:16]) for r in logged] == [("error", "mapping_conflict")]


# --- 9. OAuth refresh refused (OA-6) --------------------------------------------------------------


async def test_a_refused_refresh_flags_the_install_and_ends_the_text_dead_with_why(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """OA-6 (spec/outbound.md §2.2): GHL refusing the refresh marks the installation
    ``needs_reinstall``, logs ``ghl_oauth_needs_reinstall``, and the text that needed the token
    fails permanently (dead with the reason, not retried for hours). tests/faults/test_oauth_refusal.py
    covers the client; this is the pipeline. Fails if the refusal were retried as transient or
    the flag / log were missing."""
    from tests.support.oauth_refusal import use_up_refresh_token

    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        await use_up_refresh_token(settings, p.sandbox, clean_db)
        text = await send_texting(p, {**load_fixture("texting/message.received.json"), "messageId": "oa6-0001"})
        row = await eventually(lambda: texting_status(clean_db, text["id"], "done", "dead"))
        assert (row["status"], row["attempts"]) == ("dead", 1), row  # permanent at once, not a spent retry budget
        assert "needs a reinstall" in (row["error_message"] or ""), row["error_message"]
        [token] = await fetch(clean_db, "SELECT needs_reinstall, last_refresh_error FROM ghl_oauth_tokens")
        assert (token["needs_reinstall"], token["last_refresh_error"]) == (True, "invalid_grant")
    logged = capsys.readouterr()
    assert "ghl_oauth_needs_reinstall" in logged.out + logged.err


# --- 10. enqueue-pending / enqueue-texting-pending (§4.5) ------------------------------------------


async def test_enqueue_pending_redrives_fresh_pending_events_of_its_table_now(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """§4.5: ``enqueue-pending`` is S1 for ``webhook_events`` now *without* the age threshold,
    answering ``{"enqueued", "totalPending"}``; ``enqueue-texting-pending`` the same for the
    texting table. The rows here are seconds old (the sweep's own S1 waits 120 s) and their
    messages are not on the stream, so only the endpoint can make them run. Fails if the
    endpoint kept the age threshold, re-drove the other table, or counted wrongly."""
    from tests.support.jobs import all_in

    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings):
        contact_id, texting_id = str(uuid.uuid4()), str(uuid.uuid4())
        await execute(
            clean_db,
            """
            INSERT INTO webhook_events (id, received_at, source, event_type, event_token, canonical_type,
                entity_type, entity_id, payload_json, dedupe_key, status)
            VALUES ($1::uuid, now(), 'aloware', 'Contact Created', 'contact_created', 'contact.created',
                    'contact', '8000078', $2::jsonb, 'aloware:enqueue:78', 'pending')""",
            contact_id,
            json.dumps(aloware_contact(78)),
        )
        stop = {**load_fixture("texting/optout.stop.json"), "from": "+15555550179", "messageId": "enq-stop-1"}
        await execute(
            clean_db,
            """
            INSERT INTO texting_webhook_events (id, received_at, event_type, canonical_type, entity_type,
                entity_id, from_number, payload_json, dedupe_key, status)
            VALUES ($1::uuid, now(), 'optout.stop', 'optout.stop', 'optout', 'enq-stop-1', '+15555550179',
                    $2::jsonb, 'texting:enqueue:1', 'pending')""",
            texting_id,
            json.dumps(stop),
        )

        answer = await p.ingress.post("/api/jobs/enqueue-pending", headers=JOBS)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["enqueued"], answer.json()["totalPending"]) == (1, 1)
        await eventually(lambda: all_in(clean_db, [contact_id], "done"))
        assert [c["phone"] for c in await p.ghl_contacts()] == ["+15555550078"]
        [texting] = await fetch(clean_db, "SELECT status FROM texting_webhook_events")
        assert texting["status"] == "pending"  # the other table's endpoint is its own

        answer = await p.ingress.post("/api/jobs/enqueue-texting-pending", headers=JOBS)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["enqueued"], answer.json()["totalPending"]) == (1, 1)
        await eventually(lambda: texting_status(clean_db, texting_id, "done"))
        [registry] = await fetch(clean_db, "SELECT status FROM optout_registry WHERE phone_number = '+15555550179'")
        assert registry["status"] == "opted_out"
