"""D-1 and O-2 as tables (spec/outbound.md §1.7, §1.9): an opt-out fixture + what the
registry decides + the GHL contact found → the operations and how the delivery ends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.payloads.aloware import AlowareContactEvent
from services.domain.optout import Decision
from services.ghl_sync.rules.ops import (
    AddTags,
    Done,
    LockContact,
    LogSync,
    RecordOptOut,
    RemoveTags,
    ResolveContact,
    ResolveTextingContact,
)
from services.ghl_sync.rules.optouts import DNC_TAGS, SMS_OPTOUT_TAGS
from services.infra.errors import Permanent
from tests.unit.ghl_sync.ghl_plans import NOW, Answers, event, plan_of, run

PHONE = "+15555550101"
DNC_AT = datetime(2025, 3, 7, 9, tzinfo=UTC)
REMOVED_AT = datetime(2025, 3, 8, 9, tzinfo=UTC)


def contact(fixture: str, **changes: Any) -> Any:
    return AlowareContactEvent.model_validate(event(fixture, **changes).payload).body


def d1(status: str, **rest: Any) -> LogSync:
    return LogSync("aloware_to_ghl", "contact", "7000001", status, "D-1", **rest)  # type: ignore[arg-type]


DNC: list[tuple[str, str, dict[str, Any], Answers, list[Any], Done]] = [
    (
        "D-1: a DNC flag is recorded, then the found-or-created contact gets the DNC tags",
        "aloware/contact-dnc-updated.json",
        {},
        [(RecordOptOut, Decision(True, "opted_out")), (ResolveContact, "ghlAda"), (AddTags, ["DNC", "Do Not Call"])],
        [
            RecordOptOut(PHONE, "opted_out", "aloware", "DNC Updated", DNC_AT),
            LockContact(PHONE),
            ResolveContact(contact("aloware/contact-dnc-updated.json"), "bidirectional"),
            AddTags("ghlAda", DNC_TAGS),
            d1(
                "success",
                target_id="ghlAda",
                message="DNC status: opted_out",
                details={"tags_changed": ["DNC", "Do Not Call"]},
            ),
        ],
        Done("applied"),
    ),
    (
        "D-1: a cleared flag removes the DNC tags",
        "aloware/contact-dnc-removed.json",
        {},
        [(RecordOptOut, Decision(True, "opted_in")), (ResolveContact, "ghlAda"), (RemoveTags, ["DNC"])],
        [
            RecordOptOut(PHONE, "opted_in", "aloware", "DNC Removed", REMOVED_AT),
            LockContact(PHONE),
            ResolveContact(contact("aloware/contact-dnc-removed.json"), "bidirectional"),
            RemoveTags("ghlAda", DNC_TAGS),
            d1("success", target_id="ghlAda", message="DNC status: opted_in", details={"tags_changed": ["DNC"]}),
        ],
        Done("applied"),
    ),
    (
        "O-4: an Aloware opt-in does not clear a texting STOP: the tags stay",
        "aloware/contact-dnc-removed.json",
        {},
        [(RecordOptOut, Decision(False, "opted_out", "opt_in_blocked_by_texting")), (ResolveContact, "ghlAda")],
        [
            RecordOptOut(PHONE, "opted_in", "aloware", "DNC Removed", REMOVED_AT),
            LockContact(PHONE),
            ResolveContact(contact("aloware/contact-dnc-removed.json"), "bidirectional"),
            d1("skipped", target_id="ghlAda", message="opt_in_blocked_by_texting", details={"registry": "opted_out"}),
        ],
        Done("skipped", "opt_in_blocked_by_texting"),
    ),
    (
        "D-1: a DNC flag in the status and no updated_at: dated by the event's receipt",
        "aloware/contact-dnc-updated.json",
        {"body": {"is_dnc": None, "status": "DNC", "updated_at": None}},
        [(RecordOptOut, Decision(True, "opted_out")), (ResolveContact, "ghlAda"), (AddTags, [])],
        [
            RecordOptOut(PHONE, "opted_out", "aloware", "DNC Updated", NOW),
            LockContact(PHONE),
            ResolveContact(
                contact("aloware/contact-dnc-updated.json", body={"is_dnc": None, "status": "DNC", "updated_at": None}),
                "bidirectional",
            ),
            AddTags("ghlAda", DNC_TAGS),
            d1("success", target_id="ghlAda", message="DNC status: opted_out", details={"tags_changed": []}),
        ],
        Done("applied"),
    ),
    (
        "D-1: no phone number, nothing to record",
        "aloware/contact-dnc-updated.json",
        {"body": {"phone_number": None}},
        [],
        [d1("skipped", message="No phone number for DNC sync")],
        Done("skipped", "No phone number for DNC sync"),
    ),
]


@pytest.mark.parametrize(
    ("fixture", "changes", "answers", "expected", "done"), [c[1:] for c in DNC], ids=[c[0] for c in DNC]
)
def test_plan_dnc_update(
    fixture: str, changes: dict[str, Any], answers: Answers, expected: list[Any], done: Done
) -> None:
    assert run(plan_of(event(fixture, **changes)), answers) == (expected, done)


def o2(status: str, **rest: Any) -> LogSync:
    return LogSync("texting_to_ghl", "optout", "txtMsgDemo-0004", status, "O-2", **rest)  # type: ignore[arg-type]


STOP_AT = datetime(2025, 3, 10, 16, 5, tzinfo=UTC)
OPTOUTS: list[tuple[str, dict[str, Any], Answers, list[Any], Done]] = [
    (
        "O-2: a STOP is recorded and the texting contact gets the SMS opt-out tags",
        {},
        [
            (RecordOptOut, Decision(True, "opted_out")),
            (ResolveTextingContact, "ghlT"),
            (AddTags, list(SMS_OPTOUT_TAGS)),
        ],
        [
            RecordOptOut("+15555550103", "opted_out", "texting", "STOP", STOP_AT),
            LockContact("+15555550103"),
            ResolveTextingContact("+15555550103"),
            AddTags("ghlT", SMS_OPTOUT_TAGS),
            o2("success", target_id="ghlT", details={"tags_added": ["DNC-SMS", "SMS Opted Out"]}),
        ],
        Done("applied"),
    ),
    (
        "O-4: an older STOP changes no registry row and still tags",
        {},
        [(RecordOptOut, Decision(False, "opted_in", "stale_event")), (ResolveTextingContact, "ghlT"), (AddTags, [])],
        [
            RecordOptOut("+15555550103", "opted_out", "texting", "STOP", STOP_AT),
            LockContact("+15555550103"),
            ResolveTextingContact("+15555550103"),
            AddTags("ghlT", SMS_OPTOUT_TAGS),
            o2("success", target_id="ghlT", message="stale_event", details={"tags_added": []}),
        ],
        Done("applied"),
    ),
    (
        "O-2: the number is the sender's, else the recipient's",
        {"from": None},
        [(RecordOptOut, Decision(True, "opted_out")), (ResolveTextingContact, "ghlT"), (AddTags, [])],
        [
            RecordOptOut("+15555550100", "opted_out", "texting", "STOP", STOP_AT),
            LockContact("+15555550100"),
            ResolveTextingContact("+15555550100"),
            AddTags("ghlT", SMS_OPTOUT_TAGS),
            o2("success", target_id="ghlT", details={"tags_added": []}),
        ],
        Done("applied"),
    ),
]


@pytest.mark.parametrize(
    ("changes", "answers", "expected", "done"), [c[1:] for c in OPTOUTS], ids=[c[0] for c in OPTOUTS]
)
def test_plan_texting_optout(changes: dict[str, Any], answers: Answers, expected: list[Any], done: Done) -> None:
    assert run(plan_of(event("texting/optout.stop.json", **changes)), answers) == (expected, done)


def test_a_texting_optout_without_any_number_is_permanent() -> None:
    ops, error = run(plan_of(event("texting/optout.stop.json", **{"from": None, "to": None})))
    assert ops == [] and isinstance(error, Permanent) and error.reason == "No phone number in payload"
