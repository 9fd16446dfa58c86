"""CG (GHL contact → Aloware contact), its echo check with the sync off, and D-3, as planner
tables: a fixture + what the reads answer + the context → the exact operations."""

from __future__ import annotations

from typing import Any

import pytest

from services.aloware_sync.rules.contact import (
    ECHO,
    ContactSynced,
    aloware_form,
    plan_contact_deleted,
    plan_contact_sync,
    plan_echo_check,
)
from services.aloware_sync.rules.known import FLAG_ECHO_READS_TIMEZONE, KnownMapping
from services.aloware_sync.rules.ops import (
    CreateAlowareContact,
    HoldContactLock,
    IsEcho,
    LogSync,
    LookupAlowareContact,
    MarkGhlDeleted,
    ReadGhlContact,
    ReadMapping,
    RemoveFromAllLists,
    SyncStatus,
    UpdateAlowareContact,
    UpsertMapping,
    WriteBackToGhl,
)
from services.clients.aloware import AlowareContactRecord
from services.domain.contact import aloware_to_canonical, ghl_to_canonical
from services.infra.delivery import Outcome
from services.infra.errors import MappingConflict, RetryLater
from tests.unit.aloware_sync.aloware_plans import NOW, Then, ctx, event, ghl_contact, run

ADA = "ghlContactAda0000001"
PHONE = "+15555550101"
UPDATE = event("ghl/ContactUpdate.json")  # a marketplace body: it carries the whole contact
WORKFLOW = event("ghl/contact.updated.json")  # a dotted body: the contact must be read
GRACE = "ghlContactGrace00002"
CONTACT = ghl_contact()
CANONICAL = ghl_to_canonical(CONTACT)
SNAPSHOT = CANONICAL.with_fields(seen_at=NOW).snapshot()  # seen at the attempt's time
ALOWARE = AlowareContactRecord.model_validate(
    {
        "id": "7000001",
        "phone_number": PHONE,
        "first_name": "Ada",
        "last_name": "Example",
        "email": "ada@example.com",
        "city": "Springfield",
        "state": "CA",
        "country": "US",
    }
)


def cg(rule: str, status: SyncStatus, message: str | None, source: str = ADA, **extra: Any) -> LogSync:
    return LogSync(rule, status, "ghl_to_aloware", "contact", source, message=message, **extra)


def decisions(mode: str, alo: AlowareContactRecord) -> dict[str, Any]:
    from services.domain.merge import plan_existing

    _, _, made = plan_existing(CANONICAL, aloware_to_canonical(alo), mode)
    return {"decisions": [d.as_dict() for d in made]}


BODY_UNDER_LOCK = [
    IsEcho("ghl", ADA, CANONICAL.ghl_echo_hash()),
    HoldContactLock(PHONE, ADA),
    IsEcho("ghl", ADA, CANONICAL.ghl_echo_hash()),
]
LOCKED = [
    *BODY_UNDER_LOCK,
    ReadGhlContact(ADA),
    HoldContactLock(PHONE, ADA),
    IsEcho("ghl", ADA, CANONICAL.projection_hash()),
    LookupAlowareContact(PHONE),
]

CASES: list[tuple[str, Any, list[tuple[Any, Any]], list[Any], ContactSynced]] = [
    (
        "an echo recognised on the webhook body itself: GHL is not read",
        UPDATE,
        [(IsEcho, True)],
        [IsEcho("ghl", ADA, CANONICAL.ghl_echo_hash()), cg("LP-1", "skipped", "middleware-originated")],
        ContactSynced(ECHO, CONTACT),
    ),
    (
        "CG-1: the contact is gone from GHL",
        UPDATE,
        [(IsEcho, False), (ReadGhlContact, None)],
        [*BODY_UNDER_LOCK, ReadGhlContact(ADA), cg("CG-1", "skipped", "ghl_contact_not_found")],
        ContactSynced(Outcome("skipped", "ghl_contact_not_found"), None),
    ),
    (
        "CG-2: a contact without a phone is not written to Aloware (and takes no lock)",
        WORKFLOW,
        [(ReadGhlContact, ghl_contact(id=GRACE, phone=None))],
        [ReadGhlContact(GRACE), cg("CG-2", "skipped", "no_phone_for_aloware", GRACE)],
        ContactSynced(Outcome("skipped", "no_phone_for_aloware"), ghl_contact(id=GRACE, phone=None)),
    ),
    (
        "LP-1 on the body once its phone's lock is held: ghl-sync had not recorded the write yet",
        UPDATE,
        [(IsEcho, Then(False, True))],
        [*BODY_UNDER_LOCK, cg("LP-1", "skipped", "middleware-originated")],
        ContactSynced(ECHO, CONTACT),
    ),
    (
        "LP-1 under the lock: GHL's answer is our own write",
        UPDATE,
        [(IsEcho, Then(False, False, True)), (ReadGhlContact, CONTACT)],
        [*LOCKED[:6], cg("LP-1", "skipped", "middleware-originated")],
        ContactSynced(ECHO, CONTACT),
    ),
    (
        "CG-3: no Aloware contact with the number: created, then mapped",
        UPDATE,
        [(IsEcho, False), (ReadGhlContact, CONTACT), (LookupAlowareContact, None), (CreateAlowareContact, ALOWARE)],
        [
            *LOCKED,
            CreateAlowareContact(aloware_form(CANONICAL), CANONICAL),
            UpsertMapping(ADA, "7000001", PHONE, "ada@example.com", NOW, SNAPSHOT),
            cg("CG", "success", None, target_id="7000001", details={"decisions": []}),
        ],
        ContactSynced(Outcome("applied"), CONTACT),
    ),
    (
        "CG-4: both sides agree: nothing written, the mapping refreshed",
        UPDATE,
        [
            (IsEcho, False),
            (ReadGhlContact, CONTACT),
            (LookupAlowareContact, ALOWARE.model_copy(update={"timezone": None})),
        ],
        [
            *LOCKED,
            UpsertMapping(ADA, "7000001", PHONE, "ada@example.com", NOW, SNAPSHOT),
            cg("CG", "skipped", "no_changes", target_id="7000001", details=decisions("merge", ALOWARE)),
        ],
        ContactSynced(Outcome("skipped", "no_changes"), CONTACT),
    ),
]


@pytest.mark.parametrize(("name", "incoming", "answers", "expected", "result"), CASES, ids=[c[0] for c in CASES])
def test_plan_contact_sync(
    name: str, incoming: Any, answers: list[tuple[Any, Any]], expected: list[Any], result: ContactSynced
) -> None:
    ops, outcome = run(plan_contact_sync(incoming, incoming.entity_id, ctx()), answers)
    assert ops == expected
    assert outcome == result


def test_a_body_without_a_timezone_is_matched_without_it_unless_told_to_read_it_back() -> None:
    """GHL's contact webhooks carry no timezone: by default the body is checked with
    ``ghl_echo_hash``; with ``GHL_ECHO_IGNORES_TIMEZONE=false`` it is not trusted alone, the
    contact is read and checked whole; a body that has a timezone is checked whole."""
    assert "timezone" not in UPDATE.payload
    ops, outcome = run(plan_contact_sync(UPDATE, ADA, ctx()), [(IsEcho, True)])
    assert ops[0] == IsEcho("ghl", ADA, CANONICAL.ghl_echo_hash()) and outcome == ContactSynced(ECHO, CONTACT)
    strict = ctx(FLAG_ECHO_READS_TIMEZONE)
    ops, outcome = run(plan_contact_sync(UPDATE, ADA, strict), [(ReadGhlContact, CONTACT), (IsEcho, True)])
    read_whole = [ReadGhlContact(ADA), HoldContactLock(PHONE, ADA), IsEcho("ghl", ADA, CANONICAL.projection_hash())]
    assert ops[:3] == read_whole
    assert outcome == ContactSynced(ECHO, CONTACT)
    ops, outcome = run(plan_echo_check(UPDATE, ADA, strict), [(ReadGhlContact, CONTACT), (IsEcho, True)])
    assert ops == [ReadGhlContact(ADA), IsEcho("ghl", ADA, CANONICAL.projection_hash())]
    assert outcome == ContactSynced(ECHO, CONTACT)
    zoned = event("ghl/ContactUpdate.json", timezone="America/Chicago")
    full = ghl_to_canonical(ghl_contact(timezone="America/Chicago")).projection_hash()
    ops, _ = run(plan_contact_sync(zoned, ADA, strict), [(IsEcho, True)])
    assert ops[0] == IsEcho("ghl", ADA, full)


@pytest.mark.parametrize(
    "timezone",
    [{"deep": {"deeper": ["x"] * 50}}, ["America/Chicago"], 7, "\u0000" * 10_000],
    ids=["object", "array", "number", "nul_huge"],
)
def test_a_hostile_timezone_in_a_body_is_never_matched_alone(timezone: Any) -> None:
    """A body whose timezone is not a string fails the contact's validation and is read
    back; a string one (NUL, huge) is checked whole, so it can only match a write of it."""
    hostile = event("ghl/ContactUpdate.json", timezone=timezone)
    ops, _ = run(plan_contact_sync(hostile, ADA, ctx()), [(IsEcho, False), (ReadGhlContact, None)])
    checked = [op.projection for op in ops if isinstance(op, IsEcho)]
    assert CANONICAL.ghl_echo_hash() not in checked
    assert ReadGhlContact(ADA) in ops


def test_cg5_aloware_mode_updates_aloware_with_what_differs_and_records_its_id() -> None:
    alo = ALOWARE.model_copy(update={"first_name": "Adaline", "city": None})
    ops, outcome = run(
        plan_contact_sync(UPDATE, ADA, ctx(mode="ghl")),
        [(IsEcho, False), (ReadGhlContact, CONTACT), (LookupAlowareContact, alo)],
    )
    [update] = [op for op in ops if isinstance(op, UpdateAlowareContact)]
    assert update.aloware_id == "7000001"
    assert update.form["first_name"] == "Ada" and update.form["city"] == "Springfield"
    assert ops[-1] == cg("CG", "success", None, target_id="7000001", details=decisions("ghl", alo))
    assert outcome.outcome == Outcome("applied")


def test_cg6_merge_mode_writes_back_to_ghl_and_maps_what_ghl_answered() -> None:
    alo = ALOWARE.model_copy(update={"first_name": "Ada Lovelace"})
    after = ghl_contact(firstName="Ada Lovelace")
    ops, outcome = run(
        plan_contact_sync(UPDATE, ADA, ctx(mode="merge")),
        [(IsEcho, False), (ReadGhlContact, CONTACT), (LookupAlowareContact, alo), (WriteBackToGhl, after)],
    )
    assert ops[len(LOCKED)] == WriteBackToGhl({"firstName": "Ada Lovelace"}, ghl_id=ADA)
    assert ops[len(LOCKED) + 1] == UpsertMapping(
        ADA, "7000001", PHONE, "ada@example.com", NOW, ghl_to_canonical(after).with_fields(seen_at=NOW).snapshot()
    )
    assert outcome == ContactSynced(Outcome("applied"), after)


def test_cg6_a_write_back_to_a_contact_deleted_meanwhile_maps_nothing() -> None:
    alo = ALOWARE.model_copy(update={"first_name": "Ada Lovelace"})
    ops, outcome = run(
        plan_contact_sync(UPDATE, ADA, ctx(mode="merge")),
        [(IsEcho, False), (ReadGhlContact, CONTACT), (LookupAlowareContact, alo), (WriteBackToGhl, None)],
    )
    assert not [op for op in ops if isinstance(op, UpsertMapping | LogSync)]
    assert outcome == ContactSynced(Outcome("skipped", "ghl_contact_not_found"), None)


def test_a_contact_of_a_tag_event_is_read_not_taken_from_the_body() -> None:
    """The body echo applies to the event's own contact only (a tag event's body is not it)."""
    tag = event("ghl/tag.added.json")
    ops, _ = run(plan_contact_sync(tag, GRACE, ctx()), [(ReadGhlContact, None)])
    assert ops == [ReadGhlContact(GRACE), cg("CG-1", "skipped", "ghl_contact_not_found", GRACE)]


def test_errors_of_the_executor_end_the_flow_as_they_are() -> None:
    """A create the lookup cannot find yet (RetryLater) and a mapping conflict (CA-7/CG-7)
    are not the planner's to catch."""
    _, error = run(
        plan_contact_sync(UPDATE, ADA, ctx()),
        [
            (IsEcho, False),
            (ReadGhlContact, CONTACT),
            (LookupAlowareContact, None),
            (CreateAlowareContact, RetryLater(None, "Aloware contact not found right after create")),
        ],
    )
    assert isinstance(error, RetryLater)
    _, error = run(
        plan_contact_sync(UPDATE, ADA, ctx()),
        [
            (IsEcho, False),
            (ReadGhlContact, CONTACT),
            (LookupAlowareContact, ALOWARE),
            (UpsertMapping, MappingConflict("GHL x is mapped to Aloware y")),
        ],
    )
    assert isinstance(error, MappingConflict)


ECHO_CASES: list[tuple[str, Any, list[tuple[Any, Any]], list[Any], ContactSynced]] = [
    (
        "our own write, seen on the body",
        UPDATE,
        [(IsEcho, True)],
        [IsEcho("ghl", ADA, CANONICAL.ghl_echo_hash())],
        ContactSynced(ECHO, CONTACT),
    ),
    (
        "a marketplace body that is not ours: GHL is not read",
        UPDATE,
        [(IsEcho, False)],
        [IsEcho("ghl", ADA, CANONICAL.ghl_echo_hash())],
        ContactSynced(Outcome("skipped", "ghl_contact_sync_disabled"), None),
    ),
    (
        "a dotted body: GHL's contact is read and checked",
        WORKFLOW,
        [(ReadGhlContact, ghl_contact(id=GRACE)), (IsEcho, True)],
        [ReadGhlContact(GRACE), IsEcho("ghl", GRACE, CANONICAL.projection_hash())],
        ContactSynced(ECHO, ghl_contact(id=GRACE)),
    ),
    (
        "a dotted body for a contact gone from GHL",
        WORKFLOW,
        [(ReadGhlContact, None)],
        [ReadGhlContact(GRACE)],
        ContactSynced(Outcome("skipped", "ghl_contact_sync_disabled"), None),
    ),
]


@pytest.mark.parametrize(
    ("name", "incoming", "answers", "expected", "result"), ECHO_CASES, ids=[c[0] for c in ECHO_CASES]
)
def test_plan_echo_check(
    name: str, incoming: Any, answers: list[tuple[Any, Any]], expected: list[Any], result: ContactSynced
) -> None:
    ops, outcome = run(plan_echo_check(incoming, incoming.entity_id, ctx()), answers)
    assert (ops, outcome) == (expected, result)


DELETED = [ReadMapping(ghl_id=ADA), HoldContactLock(PHONE, ADA), ReadMapping(ghl_id=ADA)]
MAPPED = KnownMapping(ADA, "7000001", PHONE)


@pytest.mark.parametrize(
    ("name", "answers", "expected", "result"),
    [
        (
            "no mapping: nothing to remove",
            [(ReadMapping, None)],
            [
                ReadMapping(ghl_id=ADA),
                HoldContactLock(None, ADA),
                ReadMapping(ghl_id=ADA),
                cg("D-3", "skipped", "No contact mapping found"),
            ],
            Outcome("skipped", "No contact mapping found"),
        ),
        (
            "mapped without an Aloware id",
            [(ReadMapping, KnownMapping(ADA, None, PHONE))],
            [*DELETED, cg("D-3", "skipped", "No contact mapping found")],
            Outcome("skipped", "No contact mapping found"),
        ),
        (
            "mapped: off every list, then marked deleted",
            [(ReadMapping, MAPPED), (RemoveFromAllLists, True)],
            [
                *DELETED,
                RemoveFromAllLists("7000001"),
                MarkGhlDeleted(ADA),
                cg("D-3", "success", None, target_id="7000001"),
            ],
            Outcome("applied"),
        ),
        (
            "already off Aloware's lists",
            [(ReadMapping, MAPPED), (RemoveFromAllLists, False)],
            [
                *DELETED,
                RemoveFromAllLists("7000001"),
                MarkGhlDeleted(ADA),
                cg("D-3", "success", "already absent in Aloware", target_id="7000001"),
            ],
            Outcome("applied"),
        ),
    ],
)
def test_plan_contact_deleted(name: str, answers: list[tuple[Any, Any]], expected: list[Any], result: Outcome) -> None:
    deleted = event("ghl/ContactDelete.json")
    ops, outcome = run(plan_contact_deleted(deleted.entity_id), answers)
    assert (ops, outcome) == (expected, result)
