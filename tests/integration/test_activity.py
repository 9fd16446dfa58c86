"""Calls, call artifacts, dispositions and opt-outs end to end: ingress → NATS → ghl-sync /
aloware-sync → sandbox GHL, with the database rows (spec/outbound.md §1.6, §1.7, §1.9;
acceptance scenarios T1, T2, T6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.commands import ReplayRequested
from contracts.envelope import WebhookEvent
from services.domain.optout import decide, keyword
from services.infra.redrive import publish_redrive
from tests.conftest import load_fixture
from tests.support.activity import GHL, notes, send_texting  # noqa: F401
from tests.support.contacts import send_aloware, settled
from tests.support.jobs import _consumer_passed, all_in
from tests.support.jobs_rig import fetch, running_jobs
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

CALL_NOTE = (
    "Call Made on 2025-03-06T16:00:00+00:00 (3m 5s)\nDisposition: Interested\nStatus: completed\nResolution: answered"
)


async def writes(p: Pipeline) -> list[tuple[str, str]]:
    return [
        (c["method"], c["path"])
        for c in await p.calls("ghl")
        if c["method"] in ("POST", "PUT", "DELETE") and "/search" not in c["path"] and c["status"] < 300
    ]


async def redeliver(jobs: Any, db: str, event_id: str) -> None:
    """Put the accepted event on the stream again, as a redelivery would, and wait until
    ghl-sync has taken it."""
    [row] = await fetch(
        db,
        "SELECT stream_seq FROM webhook_events WHERE id = $1::uuid "
        "UNION ALL SELECT stream_seq FROM texting_webhook_events WHERE id = $1::uuid",
        event_id,
    )
    event = WebhookEvent.from_bytes((await jobs.js.get_msg("WEBHOOKS", row["stream_seq"])).data)
    seq = await publish_redrive(jobs.js, event, f"test:{event_id[:8]}")
    await eventually(lambda: _consumer_passed(jobs, seq))


async def attempts(db: str, event_id: str) -> int:
    found = await fetch(db, "SELECT count(*) AS n FROM event_attempts WHERE event_id = $1::uuid", event_id)
    return int(found[0]["n"])


def test_keywords_and_precedence_rules() -> None:
    assert [keyword(t) for t in ("STOP", " stop. ", "Stop!", "UNSUBSCRIBE", "opt-out", "start", "HELP")] == [
        "opt_out",
        "opt_out",
        "opt_out",
        "opt_out",
        "opt_out",
        "opt_in",
        "help",
    ]
    assert [keyword(t) for t in ("Please don't cancel", "see you this weekend", "stop it now", "", None)] == [None] * 5
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    assert (
        decide("opted_out", "texting", now, "opted_in", "aloware", "DNC Removed", now).reason
        == "opt_in_blocked_by_texting"
    )
    assert decide("opted_out", "texting", now, "opted_in", "ghl", "GHL DND", now).applied is False
    assert decide("opted_out", "aloware", now, "opted_in", "aloware", "DNC Removed", now).applied is True
    assert decide("opted_out", "aloware", now, "opted_in", "texting", "START", now).applied is True
    assert decide("opted_out", "texting", now, "opted_in", "manual", "manual", now).applied is True
    assert decide("opted_in", "texting", now, "opted_out", "ghl", "GHL DND", now - timedelta(1)).reason == "stale_event"


async def test_t1_t2_call_for_an_unknown_phone_creates_the_contact_and_one_note(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        call = await send_aloware(p, load_fixture("aloware/call-disposed.json"))
        await eventually(lambda: all_in(clean_db, [call["id"]], "done"))
        [contact] = await p.ghl_contacts()
        assert contact["phone"] == "+15555550101"
        assert await notes(p, contact["id"]) == [CALL_NOTE]
        assert sorted(contact["tags"]) == ["call: interested", "outbound call"]
        [mapping] = await fetch(clean_db, "SELECT * FROM contact_mappings")
        assert (mapping["ghl_contact_id"], mapping["aloware_contact_id"], mapping["sync_direction"]) == (
            contact["id"],
            "7000001",
            "aloware_to_ghl",
        )
        logs = await fetch(
            clean_db,
            "SELECT rule, status, entity_type, entity_id, target_id FROM sync_log WHERE direction = 'aloware_to_ghl'",
        )
        # the echoes of our writes are events of their own: finished (their sync_log rows
        # are written with the end of each attempt) before they are read
        await eventually(lambda: settled(p, clean_db, 3))
        echoes = await fetch(
            clean_db, "SELECT rule, status FROM sync_log WHERE direction = 'ghl_to_aloware' AND entity_type = 'contact'"
        )
        assert {(e["rule"], e["status"]) for e in echoes} == {("LP-1", "skipped")}  # our writes came back
        assert logs == [
            {
                "rule": "CL",
                "status": "success",
                "entity_type": "call",
                "entity_id": "9100001",
                "target_id": contact["id"],
            }
        ]
        before = await writes(p)
        assert [w[0] for w in before] == ["POST", "POST", "POST"]  # contact, note, tags

        # T2: the same webhook delivered again: the finished delivery is not run twice...
        await redeliver(jobs, clean_db, call["id"])
        assert await attempts(clean_db, call["id"]) == 1
        # ...and when it is run again (a replay resets it), the rule finds its note and tags
        for n in (2, 3):
            await jobs.execute(ReplayRequested(event_ids=[call["id"]]))
            await eventually(lambda n=n: _attempts_at_least(clean_db, call["id"], n))
            await eventually(lambda: all_in(clean_db, [call["id"]], "done"))
        assert await writes(p) == before  # no second note, no tag written twice
        assert await notes(p, contact["id"]) == [CALL_NOTE]
        rows = await fetch(clean_db, "SELECT status, error_message FROM sync_log WHERE rule = 'CL' ORDER BY started_at")
        assert [(r["status"], r["error_message"]) for r in rows] == [
            ("success", None),
            ("success", "already_synced"),
            ("success", "already_synced"),
        ]


async def _attempts_at_least(db: str, event_id: str, n: int) -> bool:
    return await attempts(db, event_id) >= n


async def test_call_artifacts_become_one_note_each_with_summary_tags(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        orphan = await send_aloware(p, load_fixture("aloware/recording-saved.json"))  # no mapping yet
        await eventually(lambda: all_in(clean_db, [orphan["id"]], "done"))
        [row] = await fetch(clean_db, "SELECT outcome, outcome_reason FROM webhook_events")
        assert (row["outcome"], row["outcome_reason"]) == ("skipped", "No contact mapping found")

        payload = load_fixture("aloware/call-disposed.json")
        payload["body"]["id"] = "9100011"  # not the call of the test above (stream duplicate window)
        call = await send_aloware(p, payload)
        await eventually(lambda: all_in(clean_db, [call["id"]], "done"))
        names = (
            "transcription-saved",
            "call-summarized",
            "voicemail-saved",
            "communication-initiated",
            "contact-disposed",
        )
        sent = [(await send_aloware(p, load_fixture(f"aloware/{n}.json")))["id"] for n in names]
        await eventually(lambda: all_in(clean_db, sent, "done"))
        [contact] = await p.ghl_contacts()
        bodies = sorted(await notes(p, contact["id"]))
        assert len(bodies) == 5  # call + transcription + summary + voicemail + communication
        assert bodies[0] == CALL_NOTE
        assert bodies[1].startswith("[CALL SUMMARY] 2025-03-06T16:06:00+00:00\nCall ID: 9100001\n\nAda is")
        assert bodies[2].startswith(
            "[COMMUNICATION INITIATED] 2025-03-09T15:00:00+00:00\nChannel: call\nOutcome: in-progress"
        )
        assert bodies[3] == (
            "[TRANSCRIPTION] 2025-03-06T16:05:00+00:00\nCall ID: 9100001\n\nRep: Hi Ada, "
            "thanks for taking the call. Ada: Happy to chat, I am interested in the fund.\n\n"
            "SYS:df_middleware_origin"
        )
        assert bodies[4].startswith(
            "[VOICEMAIL] 2025-03-08T13:00:00+00:00 (32s)\nCall ID: 9100004\n"
            "Voicemail: https://recordings.example.com/voicemail/9100004.mp3"
        )
        [contact] = await p.ghl_contacts()
        tags = set(contact["tags"])
        # outcomes of the summary, its keyword ("interested"; "Follow up" is not "follow-up"), the disposition
        assert {
            "summary: interested",
            "summary: follow-up needed",
            "interested",
            "disposition: not interested",
            "contact disposed",
        } <= tags
        assert "not interested" not in tags
        assert not any(t.startswith("sys:") for t in tags)  # LP-3
        before = await writes(p)
        for ident in sent:
            await redeliver(jobs, clean_db, ident)
        await jobs.execute(ReplayRequested(event_ids=sent))
        for ident in sent:
            await eventually(lambda i=ident: _attempts_at_least(clean_db, i, 2))
        await eventually(lambda: all_in(clean_db, sent, "done"))
        assert await writes(p) == before
        assert len(await notes(p, contact["id"])) == 5
        logs = await fetch(
            clean_db,
            "SELECT entity_type, error_message FROM sync_log WHERE rule = 'AR' "
            "AND entity_type = 'communication' ORDER BY started_at",
        )
        assert logs[0]["error_message"] == "Communication initiated"


async def test_t6_aloware_dnc_removed_after_an_sms_stop_keeps_the_opt_out(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        stop = await send_texting(p, load_fixture("texting/optout.stop.json"))  # +15555550103
        await eventually(lambda: _texting_done(clean_db, stop["id"]))
        [registry] = await fetch(clean_db, "SELECT status, source, reason FROM optout_registry")
        assert registry == {"status": "opted_out", "source": "texting", "reason": "STOP"}
        [contact] = await p.ghl_contacts()
        assert contact["phone"] == "+15555550103" and {"dnc-sms", "sms opted out"} <= set(contact["tags"])

        removed = load_fixture("aloware/contact-dnc-removed.json")
        removed["body"].update(phone_number="+15555550103", updated_at="2026-01-01T00:00:00+00:00")
        answer = await send_aloware(p, removed)
        await eventually(lambda: all_in(clean_db, [answer["id"]], "done"))
        [registry] = await fetch(clean_db, "SELECT status, source FROM optout_registry")
        assert registry == {"status": "opted_out", "source": "texting"}  # O-4: Aloware cannot clear a STOP
        [row] = await fetch(clean_db, "SELECT outcome_reason FROM webhook_events WHERE id = $1::uuid", answer["id"])
        assert row["outcome_reason"] == "opt_in_blocked_by_texting"
        [contact] = await p.ghl_contacts()
        assert {"dnc-sms", "sms opted out"} <= set(contact["tags"])  # tags not removed
        assert not [w for w in await writes(p) if w[0] == "DELETE"]
        history = await fetch(clean_db, "SELECT status, source FROM optout_events ORDER BY at")
        assert [(h["status"], h["source"]) for h in history] == [("opted_out", "texting"), ("opted_in", "aloware")]

        # GHL's own DND switched off for that contact: also blocked by the texting STOP (O-7)
        await p.sandbox.post(f"/_sandbox/ghl/contacts/{contact['id']}/webhook/ContactDndUpdate")
        await eventually(lambda: _log_for(clean_db, "O-7"))
        [o7] = await fetch(clean_db, "SELECT status, error_message FROM sync_log WHERE rule = 'O-7'")
        assert (o7["status"], o7["error_message"]) == ("skipped", "opt_in_blocked_by_texting")


async def test_aloware_dnc_set_and_removed_tags_the_ghl_contact(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        on = await send_aloware(p, load_fixture("aloware/contact-dnc-updated.json"))
        await eventually(lambda: all_in(clean_db, [on["id"]], "done"))
        [registry] = await fetch(clean_db, "SELECT status, source, reason FROM optout_registry")
        assert registry == {"status": "opted_out", "source": "aloware", "reason": "DNC Updated"}
        [contact] = await p.ghl_contacts()
        assert {"dnc", "do not call"} <= set(contact["tags"])
        off = await send_aloware(p, load_fixture("aloware/contact-dnc-removed.json"))  # later updated_at
        await eventually(lambda: all_in(clean_db, [off["id"]], "done"))
        [registry] = await fetch(clean_db, "SELECT status, reason FROM optout_registry")
        assert registry == {"status": "opted_in", "reason": "DNC Removed"}  # same source may clear it
        [contact] = await p.ghl_contacts()
        assert not {"dnc", "do not call"} & set(contact["tags"])
        [mapping] = await fetch(clean_db, "SELECT aloware_contact_id, phone_number FROM contact_mappings")
        assert mapping == {"aloware_contact_id": "7000001", "phone_number": "+15555550101"}


async def _texting_done(db: str, event_id: str) -> bool:
    found = await fetch(db, "SELECT status FROM texting_webhook_events WHERE id = $1::uuid", event_id)
    return bool(found) and found[0]["status"] == "done"


async def _log_for(db: str, rule: str) -> bool:
    return bool(await fetch(db, "SELECT 1 FROM sync_log WHERE rule = $1", rule))


def test_fixture_contact_disposed_tags() -> None:
    from services.ghl_sync.rules.calls import disposition_of, disposition_tags

    body = json.loads((Path(__file__).parents[1] / "fixtures/webhooks/aloware/contact-disposed.json").read_text())
    assert disposition_tags(disposition_of(body)) == ["Disposition: Not Interested", "Contact Disposed"]
