"""S (Aloware sequences from ``aloware_list_status``, spec/outbound.md §1.11) as a planner table:
the Aloware ``contact.updated`` fixture + mapping and agent state + the context → operations."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from services.aloware_sync.rules.known import FLAG_ALOWARE_SEQUENCES, AgentState, AlowarePolicy, KnownMapping
from services.aloware_sync.rules.ops import (
    DisenrollSequences,
    EnrollSequence,
    Inform,
    LogSync,
    LookupAlowareContact,
    ReadAgentState,
    ReadMapping,
    RecordListStatus,
    RemoveFromAllLists,
    SyncStatus,
)
from services.aloware_sync.rules.sequences import DISABLED, ListStatus, list_status, plan_sequence, sequence_for
from services.infra.delivery import Outcome
from services.infra.errors import Permanent, RetryLater
from tests.unit.aloware_sync.aloware_plans import ctx, event, run

ALO = "7000001"
PHONE = "+15555550101"
POLICY = AlowarePolicy(
    sequences=MappingProxyType(
        {"hot": "seq-hot", "warm": {"sequence_id": None, "optional": True}, "cold": {"sequence_id": "seq-cold"}}
    )
)
ON = (FLAG_ALOWARE_SEQUENCES,)
HOT = event("aloware/contact-updated.json")  # custom_fields.aloware_list_status = "hot"
MAPPED = KnownMapping("ghlContactAda0000001", ALO, PHONE)
STATE = AgentState(5, "CHRIS", "warm")
READS = [ReadMapping(aloware_id=ALO), ReadAgentState("ghlContactAda0000001")]
KNOWN = [(ReadMapping, MAPPED), (ReadAgentState, STATE)]


def s(
    status: SyncStatus, message: str | None, target: str | None = None, rule: str = "S", source: str = ALO
) -> LogSync:
    return LogSync(rule, status, "ghl_to_aloware", "sequence", source, target_id=target, message=message)


def with_status(status: Any, **body: Any) -> Any:
    return event("aloware/contact-updated.json", body={"custom_fields": {"aloware_list_status": status}, **body})


CASES: list[tuple[str, Any, tuple[str, ...], list[tuple[Any, Any]], list[Any], Outcome]] = [
    (
        "S-6: a new status enrols the number after clearing its lists and sequences",
        HOT,
        ON,
        [*KNOWN, (EnrollSequence, "Contact enrolled")],
        [
            *READS,
            RemoveFromAllLists(ALO),
            DisenrollSequences(PHONE),
            EnrollSequence("seq-hot", PHONE),
            s("success", "Contact enrolled", "seq-hot"),
            RecordListStatus(5, "hot"),
        ],
        Outcome("applied"),
    ),
    (
        "S-2: the status the agent row remembers changes nothing",
        HOT,
        ON,
        [(ReadMapping, MAPPED), (ReadAgentState, AgentState(5, "CHRIS", "hot"))],
        [*READS, Inform("sequence_status_unchanged", {"status": "hot"})],
        Outcome("ignored", "sequence_status_unchanged"),
    ),
    (
        "S-3: the flag off is logged and nothing is written",
        HOT,
        (),
        KNOWN,
        [*READS, s("skipped", DISABLED, rule="S-3")],
        Outcome("ignored", "aloware_sequences_disabled"),
    ),
    (
        "S-5: a status mapped as optional without a sequence",
        with_status("warm"),
        ON,
        [(ReadMapping, MAPPED), (ReadAgentState, AgentState(5, "CHRIS", "hot"))],
        [*READS, s("skipped", 'Status "warm" not in mapping (optional)'), RecordListStatus(5, "warm")],
        Outcome("ignored", 'Status "warm" not in mapping (optional)'),
    ),
    (
        "S-5: an unknown status",
        with_status("lukewarm"),
        ON,
        KNOWN,
        [*READS, s("skipped", 'Status "lukewarm" not in mapping'), RecordListStatus(5, "lukewarm")],
        Outcome("ignored", 'Status "lukewarm" not in mapping'),
    ),
    (
        "S-4: a cleared status takes the contact off every list, nothing else",
        with_status(""),
        ON,
        KNOWN,
        [
            *READS,
            RemoveFromAllLists(ALO),
            s("success", "status cleared: removed from all lists"),
            RecordListStatus(5, ""),
        ],
        Outcome("applied"),
    ),
    (
        "S-7: without an agent row the status is not stored",
        HOT,
        ON,
        [(ReadMapping, None), (EnrollSequence, "ok")],
        [
            ReadMapping(aloware_id=ALO),
            RemoveFromAllLists(ALO),
            DisenrollSequences(PHONE),
            EnrollSequence("seq-hot", PHONE),
            s("success", "ok", "seq-hot"),
        ],
        Outcome("applied"),
    ),
    (
        "S-6: errors before the enrolment are swallowed",
        with_status("cold"),
        ON,
        [
            *KNOWN,
            (RemoveFromAllLists, Permanent("aloware 404")),
            (DisenrollSequences, Permanent("aloware 400")),
            (EnrollSequence, "ok"),
        ],
        [
            *READS,
            RemoveFromAllLists(ALO),
            Inform("sequence_step_failed_ignored", {"error": "aloware 404"}),
            DisenrollSequences(PHONE),
            Inform("sequence_step_failed_ignored", {"error": "aloware 400"}),
            EnrollSequence("seq-cold", PHONE),
            s("success", "ok", "seq-cold"),
            RecordListStatus(5, "cold"),
        ],
        Outcome("applied"),
    ),
    (
        "S-6: a refused enrolment is logged as an error, not raised",
        HOT,
        ON,
        [*KNOWN, (EnrollSequence, Permanent("aloware 422: no such sequence"))],
        [
            *READS,
            RemoveFromAllLists(ALO),
            DisenrollSequences(PHONE),
            EnrollSequence("seq-hot", PHONE),
            s("error", "Failed to enroll: aloware 422: no such sequence", "seq-hot"),
            RecordListStatus(5, "hot"),
        ],
        Outcome("ignored", "Failed to enroll: aloware 422: no such sequence"),
    ),
]


@pytest.mark.parametrize(
    ("name", "incoming", "flags", "answers", "expected", "result"), CASES, ids=[c[0] for c in CASES]
)
def test_plan_sequence(
    name: str,
    incoming: Any,
    flags: tuple[str, ...],
    answers: list[tuple[Any, Any]],
    expected: list[Any],
    result: Outcome,
) -> None:
    ops, outcome = run(plan_sequence(list_status(incoming.payload, "US"), POLICY, ctx(*flags)), answers)
    assert ops == expected
    assert outcome == result


def test_a_body_without_an_id_looks_the_contact_up_by_phone() -> None:
    change = ListStatus("hot", PHONE)
    ops, _ = run(plan_sequence(change, POLICY, ctx(*ON)), [(LookupAlowareContact, None)])
    assert ops == [
        LookupAlowareContact(PHONE),
        DisenrollSequences(PHONE),
        EnrollSequence("seq-hot", PHONE),
        s("success", None, "seq-hot", source=PHONE),
    ]
    ops, _ = run(plan_sequence(change, POLICY, ctx(*ON)), [(LookupAlowareContact, Permanent("aloware 400"))])
    assert ops[:2] == [LookupAlowareContact(PHONE), DisenrollSequences(PHONE)]  # a refused lookup: no removal


def test_a_rate_limit_is_a_not_yet_and_ends_the_attempt_before_the_status_is_stored() -> None:
    ops, error = run(
        plan_sequence(list_status(HOT.payload, "US"), POLICY, ctx(*ON)),
        [*KNOWN, (DisenrollSequences, RetryLater(None, "aloware 429"))],
    )
    assert isinstance(error, RetryLater)
    assert not [op for op in ops if isinstance(op, RecordListStatus | EnrollSequence)]


def test_an_event_without_the_field_or_a_phone_triggers_nothing() -> None:
    assert list_status(event("aloware/contact-created.json").payload, "US") is None
    assert list_status({"body": {"custom_fields": {"aloware_list_status": "hot"}}}, "US") is None
    assert run(plan_sequence(None, POLICY, ctx(*ON))) == ([], Outcome("ignored", "no_list_status"))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"body": {"id": 7, "phone_number": "(555) 555-0101", "custom_fields": {"aloware_list_status": "hot"}}},
            ListStatus("hot", PHONE, "7"),
        ),
        ({"customFields": {"aloware_list_status": None}, "phoneNumber": "not a phone"}, ListStatus("", "not a phone")),
        ({"body": {"phone": PHONE}, "custom": {"aloware_list_status": "x"}, "phone": PHONE}, ListStatus("x", PHONE)),
    ],
)
def test_s1_reads_body_first_then_the_top_level(payload: dict[str, Any], expected: ListStatus) -> None:
    assert list_status(payload, "US") == expected


def test_s5_mapping_entries() -> None:
    assert sequence_for(POLICY.sequences, "hot") == ("seq-hot", False)
    assert sequence_for(POLICY.sequences, "warm") == (None, True)
    assert sequence_for(POLICY.sequences, "cold") == ("seq-cold", False)
    assert sequence_for(POLICY.sequences, "none") == (None, False)
