"""CL, AR and D-2 as tables (spec/outbound.md §1.6, §1.7): an Aloware fixture + what
PostgreSQL knows (the mapping) + what GHL answers (note posted? tags added?) + context →
the operations and how the delivery ends."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.payloads.aloware import AlowareContact
from services.ghl_sync.rules.calls import call_note, parse_call
from services.ghl_sync.rules.ops import (
    AddTags,
    Done,
    FindLiveMapping,
    FindPendingContactSync,
    KnownMapping,
    LockContact,
    LogSync,
    LookupAlowareContact,
    PostNoteOnce,
    ResolveContact,
)
from services.infra.errors import Permanent, RetryLater
from tests.unit.ghl_sync.ghl_plans import NOW, Answers, ctx, event, plan_of, run

ADA = KnownMapping("ghlAda", "+15555550101")
NO_PHONE = KnownMapping("ghlBob", None)
POSTED: Answers = [(FindLiveMapping, ADA), (PostNoteOnce, True), (AddTags, lambda op: list(op.tags))]
ALREADY: Answers = [(FindLiveMapping, ADA), (PostNoteOnce, False), (AddTags, [])]
FOOTER = "\n\nSYS:df_middleware_origin"

CALL_NOTE = (
    "Call Made on 2025-03-06T16:00:00+00:00 (3m 5s)\nDisposition: Interested\nStatus: completed\nResolution: answered"
)


def cl(status: str, rule: str, source: str = "9100001", **rest: Any) -> LogSync:
    return LogSync("aloware_to_ghl", "call", source, status, rule, **rest)  # type: ignore[arg-type]


CALLS: list[tuple[str, str, dict[str, Any], Answers, list[Any], Done]] = [
    (
        "CL: a mapped contact gets the call note and the call tags",
        "aloware/call-disposed.json",
        {},
        POSTED,
        [
            LockContact("+15555550101"),
            FindLiveMapping("7000001", "+15555550101"),
            PostNoteOnce("call", "9100001", "ghlAda", CALL_NOTE),
            AddTags("ghlAda", ("Call: Interested", "Outbound Call")),
            cl(
                "success",
                "CL",
                target_id="ghlAda",
                details={"note": True, "tags_added": ["Call: Interested", "Outbound Call"], "contact_resolved": False},
            ),
        ],
        Done("applied"),
    ),
    (
        "CL: integer ids are the same ids as strings",
        "aloware/call-disposed-numeric-ids.json",
        {},
        POSTED,
        [
            LockContact("+15555550101"),
            FindLiveMapping("7000001", "+15555550101"),
            PostNoteOnce("call", "9100001", "ghlAda", CALL_NOTE),
            AddTags("ghlAda", ("Call: Interested", "Outbound Call")),
            cl(
                "success",
                "CL",
                target_id="ghlAda",
                details={"note": True, "tags_added": ["Call: Interested", "Outbound Call"], "contact_resolved": False},
            ),
        ],
        Done("applied"),
    ),
    (
        "CL: an inbound call is a received call",
        "aloware/inbound-phone-call-completed.json",
        {},
        POSTED,
        [
            LockContact("+15555550101"),
            FindLiveMapping("7000001", "+15555550101"),
            PostNoteOnce(
                "call",
                "9100002",
                "ghlAda",
                "Call Received on 2025-03-07T10:00:00+00:00 (1m 10s)\nDisposition: Callback Requested\n"
                "Status: completed\nResolution: answered",
            ),
            AddTags("ghlAda", ("Call: Callback Requested", "Inbound Call")),
            cl(
                "success",
                "CL",
                "9100002",
                target_id="ghlAda",
                details={
                    "note": True,
                    "tags_added": ["Call: Callback Requested", "Inbound Call"],
                    "contact_resolved": False,
                },
            ),
        ],
        Done("applied"),
    ),
    (
        "CL: a redelivered call changes nothing",
        "aloware/call-disposed.json",
        {},
        ALREADY,
        [
            LockContact("+15555550101"),
            FindLiveMapping("7000001", "+15555550101"),
            PostNoteOnce("call", "9100001", "ghlAda", CALL_NOTE),
            AddTags("ghlAda", ("Call: Interested", "Outbound Call")),
            cl(
                "success",
                "CL",
                target_id="ghlAda",
                message="already_synced",
                details={"note": False, "tags_added": [], "contact_resolved": False},
            ),
        ],
        Done("skipped", "already_synced"),
    ),
    (
        "CL-1: an unmapped caller is looked up by phone and found or created",
        "aloware/call-disposed.json",
        {},
        [
            (LookupAlowareContact, AlowareContact(id="7000001", phone_number="+15555550101")),
            (ResolveContact, "ghlNew"),
            (PostNoteOnce, True),
            (AddTags, []),
        ],
        [
            LockContact("+15555550101"),
            FindLiveMapping("7000001", "+15555550101"),
            LookupAlowareContact("7000001", "+15555550101", None),
            ResolveContact(AlowareContact(id="7000001", phone_number="+15555550101")),
            PostNoteOnce("call", "9100001", "ghlNew", CALL_NOTE),
            AddTags("ghlNew", ("Call: Interested", "Outbound Call")),
            cl("success", "CL", target_id="ghlNew", details={"note": True, "tags_added": [], "contact_resolved": True}),
        ],
        Done("applied"),
    ),
    (
        "CL-1: the contact object a call webhook embeds is used first",
        "aloware/call-disposed.json",
        {
            "body": {
                "contact_id": None,
                "lead_number": None,
                "contact": {"id": "7000009", "phone_number": "(555) 555-0109", "first_name": "Eve"},
            }
        },
        [
            (LookupAlowareContact, AlowareContact(id="7000009", phone_number="(555) 555-0109")),
            (ResolveContact, "ghlEve"),
            (PostNoteOnce, True),
            (AddTags, []),
        ],
        [
            LockContact("+15555550109"),
            FindLiveMapping("7000009", "+15555550109"),
            LookupAlowareContact(
                "7000009", "+15555550109", {"id": "7000009", "phone_number": "(555) 555-0109", "first_name": "Eve"}
            ),
            ResolveContact(AlowareContact(id="7000009", phone_number="(555) 555-0109")),
            PostNoteOnce("call", "9100001", "ghlEve", CALL_NOTE),
            AddTags("ghlEve", ("Call: Interested", "Outbound Call")),
            cl("success", "CL", target_id="ghlEve", details={"note": True, "tags_added": [], "contact_resolved": True}),
        ],
        Done("applied"),
    ),
    (
        "CL-1: no mapping and no phone number is no contact",
        "aloware/call-disposed.json",
        {"body": {"lead_number": None}},
        [],
        [LockContact("aloware:7000001"), FindLiveMapping("7000001", None), cl("skipped", "CL-1", message="no_contact")],
        Done("skipped", "no_contact"),
    ),
]


@pytest.mark.parametrize(
    ("fixture", "changes", "answers", "expected", "done"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS]
)
def test_plan_call(fixture: str, changes: dict[str, Any], answers: Answers, expected: list[Any], done: Done) -> None:
    assert run(plan_of(event(fixture, **changes)), answers) == (expected, done)


def test_a_call_without_id_is_permanent() -> None:
    with pytest.raises(Permanent, match="No call id"):
        plan_of(event("aloware/call-disposed.json", body={"id": None, "call_id": None}))


def test_the_call_note_is_cut_at_the_note_limit() -> None:
    ops, _ = run(plan_of(event("aloware/call-disposed.json"), ctx(note_max=100)), POSTED)
    note = next(op for op in ops if isinstance(op, PostNoteOnce))
    assert len(CALL_NOTE) > 100
    assert note.text.endswith("…[truncated]") and len(note.text) == 100


def test_a_call_without_time_is_dated_by_its_receipt() -> None:
    call = parse_call(event("aloware/call-disposed.json", body={"created_at": None}).payload, NOW)
    assert call is not None and call_note(call).startswith(f"Call Made on {NOW.isoformat()} (3m 5s)")


def ar(kind: str, source: str, status: str, **rest: Any) -> LogSync:
    return LogSync("aloware_to_ghl", kind, source, status, "AR", **rest)  # type: ignore[arg-type]


ARTIFACTS: list[tuple[str, str, dict[str, Any], Answers, list[Any], Done]] = [
    (
        "AR: a transcription is a note on the mapped contact",
        "aloware/transcription-saved.json",
        {},
        POSTED,
        [
            FindLiveMapping("7000001", None),
            LockContact("+15555550101"),
            PostNoteOnce(
                "transcription",
                "9300001",
                "ghlAda",
                "[TRANSCRIPTION] 2025-03-06T16:05:00+00:00\nCall ID: 9100001\n\nRep: Hi Ada, thanks for taking "
                "the call. Ada: Happy to chat, I am interested in the fund." + FOOTER,
            ),
            AddTags("ghlAda", ()),
            ar("transcription", "9300001", "success", target_id="ghlAda", details={"note": True, "tags_added": []}),
        ],
        Done("applied"),
    ),
    (
        "AR-5: a summary is a note and its outcome and keyword tags",
        "aloware/call-summarized.json",
        {},
        POSTED,
        [
            FindLiveMapping("7000001", None),
            LockContact("+15555550101"),
            PostNoteOnce(
                "call_summary",
                "9400001",
                "ghlAda",
                "[CALL SUMMARY] 2025-03-06T16:06:00+00:00\nCall ID: 9100001\n\nAda is interested and asked for "
                "the investor deck. Follow up next Tuesday." + FOOTER,
            ),
            AddTags("ghlAda", ("Summary: Interested", "Summary: Follow-up Needed", "Interested")),
            ar(
                "call_summary",
                "9400001",
                "success",
                target_id="ghlAda",
                details={
                    "note": True,
                    "tags_added": ["Summary: Interested", "Summary: Follow-up Needed", "Interested"],
                },
            ),
        ],
        Done("applied"),
    ),
    (
        "AR: a recording is a note with its link, on a contact locked by its GHL id",
        "aloware/recording-saved.json",
        {},
        [(FindLiveMapping, NO_PHONE), (PostNoteOnce, True), (AddTags, [])],
        [
            FindLiveMapping("7000001", None),
            LockContact("ghl:ghlBob"),
            PostNoteOnce(
                "recording",
                "9500001",
                "ghlBob",
                "[RECORDING] 2025-03-06T16:04:00+00:00 (185s)\nCall ID: 9100001\n"
                "Recording: https://recordings.example.com/calls/9100001.mp3" + FOOTER,
            ),
            AddTags("ghlBob", ()),
            ar("recording", "9500001", "success", target_id="ghlBob", details={"note": True, "tags_added": []}),
        ],
        Done("applied"),
    ),
    (
        "AR: a voicemail posted before changes nothing",
        "aloware/voicemail-saved.json",
        {},
        ALREADY,
        [
            FindLiveMapping("7000001", None),
            LockContact("+15555550101"),
            PostNoteOnce(
                "voicemail",
                "9600001",
                "ghlAda",
                "[VOICEMAIL] 2025-03-08T13:00:00+00:00 (32s)\nCall ID: 9100004\n"
                "Voicemail: https://recordings.example.com/voicemail/9100004.mp3" + FOOTER,
            ),
            AddTags("ghlAda", ()),
            ar(
                "voicemail",
                "9600001",
                "success",
                target_id="ghlAda",
                message="already_synced",
                details={"note": False, "tags_added": []},
            ),
        ],
        Done("skipped", "already_synced"),
    ),
    (
        "AR: a communication is a note logged with its state",
        "aloware/communication-disposed.json",
        {},
        POSTED,
        [
            FindLiveMapping("7000001", None),
            LockContact("+15555550101"),
            PostNoteOnce(
                "communication",
                "9100005",
                "ghlAda",
                "[COMMUNICATION DISPOSED] 2025-03-09T15:00:40+00:00\nChannel: call\nOutcome: No Answer" + FOOTER,
            ),
            AddTags("ghlAda", ()),
            ar(
                "communication",
                "9100005",
                "success",
                target_id="ghlAda",
                message="Communication disposed",
                details={"note": True, "tags_added": []},
            ),
        ],
        Done("applied"),
    ),
    (
        "AR: an artifact without an id of its own is keyed by its event",
        "aloware/transcription-saved.json",
        {"body": {"id": None}, "id": None},
        POSTED,
        [
            FindLiveMapping("7000001", None),
            LockContact("+15555550101"),
            PostNoteOnce(
                "transcription",
                "event:{dedupe}",
                "ghlAda",
                "[TRANSCRIPTION] 2025-03-06T16:05:00+00:00\nCall ID: 9100001\n\nRep: Hi Ada, thanks for taking "
                "the call. Ada: Happy to chat, I am interested in the fund." + FOOTER,
            ),
            AddTags("ghlAda", ()),
            ar("transcription", "unknown", "success", target_id="ghlAda", details={"note": True, "tags_added": []}),
        ],
        Done("applied"),
    ),
    (
        "AR-3: an artifact of an unmapped contact is skipped (never creates one)",
        "aloware/recording-saved.json",
        {},
        [],
        [
            FindLiveMapping("7000001", None),
            FindPendingContactSync("7000001"),  # none: its contact sync is not still to run
            ar("recording", "9500001", "skipped", message="No contact mapping found"),
        ],
        Done("skipped", "No contact mapping found"),
    ),
    (
        "AR: a recording without a link is skipped without a lookup",
        "aloware/recording-saved.json",
        {"body": {"url": None}},
        [],
        [ar("recording", "9500001", "skipped", message="No recording URL in payload")],
        Done("skipped", "No recording URL in payload"),
    ),
    (
        "AR: a communication without a contact id is skipped",
        "aloware/communication-initiated.json",
        {"body": {"contact_id": None}},
        [],
        [ar("communication", "9100005", "skipped", message="No contact_id in payload")],
        Done("skipped", "No contact_id in payload"),
    ),
]


@pytest.mark.parametrize(
    ("fixture", "changes", "answers", "expected", "done"), [c[1:] for c in ARTIFACTS], ids=[c[0] for c in ARTIFACTS]
)
def test_plan_artifact(
    fixture: str, changes: dict[str, Any], answers: Answers, expected: list[Any], done: Done
) -> None:
    envelope = event(fixture, **changes)
    expected = [
        PostNoteOnce(op.kind, op.source_id.replace("{dedupe}", envelope.dedupe_key), op.ghl_id, op.text)
        if isinstance(op, PostNoteOnce)
        else op
        for op in expected
    ]
    assert run(plan_of(envelope), answers) == (expected, done)


def test_an_artifact_without_a_call_id_is_permanent() -> None:
    envelope = event("aloware/voicemail-saved.json", body={"call_id": None, "communication_id": None})
    ops, error = run(plan_of(envelope))
    assert ops == [] and isinstance(error, Permanent) and error.reason == "No call_id found in voicemail payload"


def d2(status: str, **rest: Any) -> LogSync:
    return LogSync("aloware_to_ghl", "contact", "7000001", status, "D-2", **rest)  # type: ignore[arg-type]


DISPOSITIONS: list[tuple[str, dict[str, Any], Answers, list[Any], Done]] = [
    (
        "D-2: the disposition tags on the mapped contact",
        {},
        [(FindLiveMapping, ADA), (AddTags, lambda op: list(op.tags))],
        [
            FindLiveMapping("7000001", "+15555550101"),
            LockContact("+15555550101"),
            AddTags("ghlAda", ("Disposition: Not Interested", "Contact Disposed")),
            d2(
                "success",
                target_id="ghlAda",
                message="Disposition: Not Interested",
                details={"tags_added": ["Disposition: Not Interested", "Contact Disposed"]},
            ),
        ],
        Done("applied"),
    ),
    (
        "D-2: tags GHL has already are nothing to do",
        {},
        [(FindLiveMapping, ADA), (AddTags, [])],
        [
            FindLiveMapping("7000001", "+15555550101"),
            LockContact("+15555550101"),
            AddTags("ghlAda", ("Disposition: Not Interested", "Contact Disposed")),
            d2("success", target_id="ghlAda", message="Disposition: Not Interested", details={"tags_added": []}),
        ],
        Done("skipped", "already_synced"),
    ),
    (
        "D-2: a contact without mapping is skipped",
        {"body": {"disposition_status": None, "disposition": "Callback"}},
        [],
        [
            FindLiveMapping("7000001", "+15555550101"),
            FindPendingContactSync("7000001"),
            d2("skipped", message="No contact mapping found"),
        ],
        Done("skipped", "No contact mapping found"),
    ),
]


@pytest.mark.parametrize(
    ("changes", "answers", "expected", "done"), [c[1:] for c in DISPOSITIONS], ids=[c[0] for c in DISPOSITIONS]
)
def test_plan_disposition(changes: dict[str, Any], answers: Answers, expected: list[Any], done: Done) -> None:
    assert run(plan_of(event("aloware/contact-disposed.json", **changes)), answers) == (expected, done)


WAITING = [(FindPendingContactSync, "5a1d0000-0000-4000-8000-00000000c0de")]


@pytest.mark.parametrize(
    "fixture", ["aloware/recording-saved.json", "aloware/contact-disposed.json"], ids=["AR", "D-2"]
)
def test_an_unmapped_contact_whose_sync_is_still_to_run_is_waited_for(fixture: str) -> None:
    """Lanes (#18): the contact's own sync waits in the bulk lane; its note or tag is not
    skipped for good but tried again, not as an attempt, once that sync may have run."""
    ops, error = run(plan_of(event(fixture)), WAITING)
    assert ops[-1] == FindPendingContactSync("7000001"), ops
    assert isinstance(error, RetryLater) and not error.counts_as_attempt and error.delay == 15.0, error
    assert "5a1d0000-0000-4000-8000-00000000c0de" in error.reason
    assert not any(isinstance(op, LogSync) for op in ops)  # no sync_log row for a wait
