"""The opt-outs aloware-sync acts on (O-2, M-1.4, D-1 read as ghl-sync reads them) and O-7
(GHL DND → registry) as planner tables, from the texting, Aloware and GHL fixtures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.aloware_sync.rules.ops import LogSync, ReadGhlContact, RecordOptOut, SyncStatus
from services.aloware_sync.rules.optouts import (
    DndChange,
    OptOut,
    aloware_dnc,
    plan_dnd_changed,
    stop_keyword,
    texting_stop,
)
from services.domain.optout import Decision
from services.infra.delivery import Outcome
from tests.unit.aloware_sync.aloware_plans import NOW, ctx, event, ghl_contact, run


@pytest.mark.parametrize(
    ("fixture", "changes", "expected"),
    [
        (
            "texting/optout.stop.json",
            {},
            OptOut("+15555550103", "texting", "STOP", datetime(2025, 3, 10, 16, 5, tzinfo=UTC)),
        ),
        (
            "texting/optout.stop.json",
            {"from": None},
            OptOut("+15555550100", "texting", "STOP", datetime(2025, 3, 10, 16, 5, tzinfo=UTC)),
        ),
        ("texting/optout.stop.json", {"from": None, "to": None}, None),
        ("texting/optout.stop.json", {"timestamp": "soon"}, OptOut("+15555550103", "texting", "STOP", NOW)),
    ],
)
def test_o2_a_texting_stop(fixture: str, changes: dict[str, Any], expected: OptOut | None) -> None:
    assert texting_stop(event(fixture, **changes), "US") == expected


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("texting/message.received-stop-keyword.json", OptOut("+15555550104", "texting", "STOP", NOW, under_lock=True)),
        ("texting/message.received-false-stop.json", None),  # a text that only contains a keyword (O-3)
        ("texting/message.received.json", None),
        ("texting/message.sent.json", None),  # our own outbound text
    ],
)
def test_m14_an_inbound_stop_text(fixture: str, expected: OptOut | None) -> None:
    assert stop_keyword(event(fixture), "US") == expected


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        (
            "aloware/contact-dnc-updated.json",
            OptOut("+15555550101", "aloware", "DNC Updated", datetime(2025, 3, 7, 9, tzinfo=UTC)),
        ),
        ("aloware/contact-dnc-removed.json", None),  # a DNC removal changes no list
    ],
)
def test_d1_an_aloware_dnc(fixture: str, expected: OptOut | None) -> None:
    assert aloware_dnc(event(fixture), "US") == expected


ADA = "ghlContactAda0000001"
PHONE = "+15555550101"
DND = event("ghl/ContactDndUpdate.json")
DND_ON = ghl_contact("ghl/ContactDndUpdate.json")
DND_OFF = ghl_contact("ghl/ContactDndUpdate.json", dnd=False, dndSettings={"SMS": {"status": "inactive"}})


def o7(status: SyncStatus, message: str | None, target: str | None = PHONE) -> LogSync:
    return LogSync("O-7", status, "ghl_to_texting", "optout", ADA, target_id=target, message=message)


CASES: list[tuple[str, list[tuple[Any, Any]], list[Any], DndChange]] = [
    (
        "DND on: recorded as opted out, the number handed to R3",
        [(ReadGhlContact, DND_ON), (RecordOptOut, Decision(True, "opted_out"))],
        [
            ReadGhlContact(ADA),
            RecordOptOut(PHONE, "opted_out", "ghl", "GHL DND", NOW),
            o7("success", "DND status: opted_out"),
        ],
        DndChange(Outcome("applied"), PHONE),
    ),
    (
        "SMS DND alone is an opt-out too",
        [(ReadGhlContact, DND_ON.model_copy(update={"dnd": False})), (RecordOptOut, Decision(True, "opted_out"))],
        [
            ReadGhlContact(ADA),
            RecordOptOut(PHONE, "opted_out", "ghl", "GHL DND", NOW),
            o7("success", "DND status: opted_out"),
        ],
        DndChange(Outcome("applied"), PHONE),
    ),
    (
        "O-4: a GHL opt-in never clears a texting STOP, and changes no list",
        [(ReadGhlContact, DND_OFF), (RecordOptOut, Decision(False, "opted_out", "opt_in_blocked_by_texting"))],
        [
            ReadGhlContact(ADA),
            RecordOptOut(PHONE, "opted_in", "ghl", "GHL DND", NOW),
            o7("skipped", "opt_in_blocked_by_texting"),
        ],
        DndChange(Outcome("skipped", "opt_in_blocked_by_texting")),
    ),
    (
        "the contact gone from GHL",
        [(ReadGhlContact, None)],
        [ReadGhlContact(ADA), o7("skipped", "ghl_contact_not_found", None)],
        DndChange(Outcome("skipped", "ghl_contact_not_found")),
    ),
    (
        "a contact without a phone",
        [(ReadGhlContact, DND_ON.model_copy(update={"phone": None}))],
        [ReadGhlContact(ADA), o7("skipped", "no_phone", None)],
        DndChange(Outcome("skipped", "no_phone")),
    ),
]


@pytest.mark.parametrize(("name", "answers", "expected", "result"), CASES, ids=[c[0] for c in CASES])
def test_plan_dnd_changed(name: str, answers: list[tuple[Any, Any]], expected: list[Any], result: DndChange) -> None:
    assert run(plan_dnd_changed(DND, ctx()), answers) == (expected, result)
