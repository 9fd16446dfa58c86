"""AP-1…AP-4 as a table: GHL appointment fixture + our mapping + context (+ what GHL, the
Verity database and each step answer) → the operations and the outcome
(spec/outbound.md §1.13)."""

from __future__ import annotations

from typing import Any

import pytest

from services.infra.delivery import Outcome
from services.verity_sync.rules.appointment import (
    AppointmentRef,
    KnownAppointment,
    appointment_ref,
    plan_appointment_link,
)
from services.verity_sync.rules.ops import (
    GHL_API,
    VERITY_DATABASE,
    FindAppointmentContact,
    FindGhlDuplicate,
    FindVerityContact,
    LinkLead,
    LogSync,
    PublishAnalyticsUpdate,
    Reach,
    ReachedBroadcasts,
    ReadGhlContact,
    ReadMapping,
    StepFailed,
    SyncSubject,
)
from tests.unit.verity_sync.verity_plans import Answers, ctx, ghl_event, run

MARKETPLACE = "ghl/AppointmentCreate.json"
WORKFLOW = "ghl/workflow-appointment-webhook.json"
ADA, ADA_APPT = "ghlContactAda0000001", "ghlApptDemo000000001"
GRACE, GRACE_APPT = "ghlContactGrace00002", "ghlApptDemo000000002"
ADA_REACH = Reach("+15555550101", "ada@example.com")
GRACE_PAYLOAD = Reach("+15555550102", "grace@example.com")
BOTH = (VERITY_DATABASE, GHL_API)


def subject(appointment: str) -> SyncSubject:
    return SyncSubject("ghl_to_verity", "appointment", appointment)


def linked(appointment: str, contact: str, verity: str, broadcasts: list[str]) -> list[Any]:
    """AP-2 and AP-3 once the Verity contact is found: lead, broadcasts, one event each, log."""
    return [
        LinkLead(verity, appointment),
        ReachedBroadcasts(verity),
        *(PublishAnalyticsUpdate(b, appointment, contact) for b in broadcasts),
        LogSync("AP", "success", subject(appointment), target_id=verity, details={"broadcasts": broadcasts}),
    ]


CASES: list[tuple[str, str, dict[str, Any], KnownAppointment, tuple[str, ...], Answers, list[Any], Outcome]] = [
    (
        "the mapped contact's lead gets the appointment and each reached broadcast is recomputed",
        MARKETPLACE,
        {},
        KnownAppointment(ADA_REACH),
        BOTH,
        [(FindVerityContact(*ADA_REACH.__dict__.values()), "vc1"), (ReachedBroadcasts, ["b1", "b2"])],
        [FindVerityContact("+15555550101", "ada@example.com"), *linked(ADA_APPT, ADA, "vc1", ["b1", "b2"])],
        Outcome("applied"),
    ),
    (
        "no mapping: GHL's contact gives the phone (made E.164) and e-mail",
        MARKETPLACE,
        {},
        KnownAppointment(),
        BOTH,
        [
            (ReadGhlContact(ADA), Reach("(555) 555-0101", "ada@example.com")),
            (FindVerityContact, "vc1"),
            (ReachedBroadcasts, []),
        ],
        [ReadGhlContact(ADA), FindVerityContact("+15555550101", "ada@example.com"), *linked(ADA_APPT, ADA, "vc1", [])],
        Outcome("applied"),
    ),
    (
        "a mapping without phone or e-mail is no help: GHL is asked",
        MARKETPLACE,
        {},
        KnownAppointment(Reach(None, None)),
        BOTH,
        [(ReadGhlContact(ADA), ADA_REACH), (FindVerityContact, "vc1"), (ReachedBroadcasts, [])],
        [ReadGhlContact(ADA), FindVerityContact(*ADA_REACH.__dict__.values()), *linked(ADA_APPT, ADA, "vc1", [])],
        Outcome("applied"),
    ),
    (
        "a workflow body: GHL has no such contact, so the body's own phone and e-mail find Verity's",
        WORKFLOW,
        {},
        KnownAppointment(),
        BOTH,
        [(ReadGhlContact(GRACE), None), (FindVerityContact, "vc2"), (ReachedBroadcasts, ["b3"])],
        [
            ReadGhlContact(GRACE),
            FindVerityContact(*GRACE_PAYLOAD.__dict__.values()),
            *linked(GRACE_APPT, GRACE, "vc2", ["b3"]),
        ],
        Outcome("applied"),
    ),
    (
        "no contact id: GHL's appointment names the contact (G15), our mapping reaches it",
        WORKFLOW,
        {"contactId": None},
        KnownAppointment(),
        BOTH,
        [
            (FindAppointmentContact(GRACE_APPT), "c9"),
            (ReadMapping("c9"), Reach("+15555550109", None)),
            (FindVerityContact, "vc9"),
            (ReachedBroadcasts, []),
        ],
        [
            FindAppointmentContact(GRACE_APPT),
            ReadMapping("c9"),
            FindVerityContact("+15555550109", None),
            *linked(GRACE_APPT, "c9", "vc9", []),
        ],
        Outcome("applied"),
    ),
    (
        "no contact id, appointment unknown to GHL: its duplicate search by phone, then e-mail (AP-1)",
        WORKFLOW,
        {"contactId": None},
        KnownAppointment(),
        BOTH,
        [
            (FindGhlDuplicate(email="grace@example.com"), "c7"),
            (ReadMapping("c7"), None),
            (ReadGhlContact("c7"), Reach("+15555550107", None)),
            (FindVerityContact, None),
        ],
        [
            FindAppointmentContact(GRACE_APPT),
            FindGhlDuplicate(phone="+15555550102"),
            FindGhlDuplicate(email="grace@example.com"),
            ReadMapping("c7"),
            ReadGhlContact("c7"),
            FindVerityContact("+15555550107", None),
            LogSync("AP-2", "skipped", subject(GRACE_APPT), "verity_contact_not_found"),
        ],
        Outcome("skipped", "verity_contact_not_found"),
    ),
    (
        "GHL not configured: no GHL call, the body's details only",
        WORKFLOW,
        {"contactId": None},
        KnownAppointment(),
        (VERITY_DATABASE,),
        [(FindVerityContact, "vc2"), (ReachedBroadcasts, [])],
        [FindVerityContact(*GRACE_PAYLOAD.__dict__.values()), *linked(GRACE_APPT, "?", "vc2", [])],
        Outcome("applied"),
    ),
    (
        "nothing to find the contact by: logged, not failed (AP-4)",
        WORKFLOW,
        {"contactId": None, "phone": None, "email": None},
        KnownAppointment(),
        (VERITY_DATABASE,),
        [],
        [LogSync("AP", "error", subject(GRACE_APPT), "no contact id, phone or e-mail in the appointment")],
        Outcome("skipped", "appointment_link_failed: Permanent"),
    ),
    (
        "the Verity database failing a step is logged, not failed (AP-4)",
        MARKETPLACE,
        {},
        KnownAppointment(ADA_REACH),
        BOTH,
        [(FindVerityContact, StepFailed("ConnectionRefusedError", "Connect call failed ('127.0.0.1', 5)"))],
        [
            FindVerityContact(*ADA_REACH.__dict__.values()),
            LogSync("AP", "error", subject(ADA_APPT), "Connect call failed ('127.0.0.1', 5)"),
        ],
        Outcome("skipped", "appointment_link_failed: ConnectionRefusedError"),
    ),
    (
        "GHL failing the lookup is logged, not failed (AP-4)",
        MARKETPLACE,
        {},
        KnownAppointment(),
        BOTH,
        [(ReadGhlContact, StepFailed("RetryLater", "ghl 502 at contacts.get"))],
        [ReadGhlContact(ADA), LogSync("AP", "error", subject(ADA_APPT), "ghl 502 at contacts.get")],
        Outcome("skipped", "appointment_link_failed: RetryLater"),
    ),
    (
        "without VERITY_DATABASE_URL nothing is linked",
        MARKETPLACE,
        {},
        KnownAppointment(ADA_REACH),
        (GHL_API,),
        [],
        [],
        Outcome("skipped", "verity_database_not_configured"),
    ),
]


@pytest.mark.parametrize(
    ("fixture", "changes", "known", "flags", "answers", "ops", "outcome"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan_appointment_link(
    fixture: str,
    changes: dict[str, Any],
    known: KnownAppointment,
    flags: tuple[str, ...],
    answers: Answers,
    ops: list[Any],
    outcome: Outcome,
) -> None:
    plan = plan_appointment_link(appointment_ref(ghl_event(fixture, **changes)), known, ctx(*flags))
    assert run(plan, answers) == (ops, outcome)


def test_a_long_step_error_is_cut_to_500_characters() -> None:
    plan = plan_appointment_link(appointment_ref(ghl_event(MARKETPLACE)), KnownAppointment(ADA_REACH), ctx(*BOTH))
    ops, _ = run(plan, [(FindVerityContact, StepFailed("PostgresError", "x" * 900))])
    assert ops[-1] == LogSync("AP", "error", subject(ADA_APPT), "x" * 500)


@pytest.mark.parametrize(
    ("fixture", "changes", "ref"),
    [
        (MARKETPLACE, {}, AppointmentRef(ADA_APPT, ADA, None, None, ADA_APPT)),
        (WORKFLOW, {}, AppointmentRef(GRACE_APPT, GRACE, "+15555550102", "grace@example.com", GRACE_APPT)),
        (
            WORKFLOW,
            {"contactId": None, "phone": None, "contact": {"id": "c5", "phone": "+15555550105"}},
            AppointmentRef(GRACE_APPT, "c5", "+15555550105", "grace@example.com", GRACE_APPT),
        ),
    ],
)
def test_appointment_ref_reads_the_shapes_ghl_sends(fixture: str, changes: dict[str, Any], ref: AppointmentRef) -> None:
    assert appointment_ref(ghl_event(fixture, **changes)) == ref
