"""CA as tables (spec/outbound.md §1.2): an Aloware contact fixture + what PostgreSQL knows
(mapping, echo ledger) + context → the operations and how the delivery ends; the write plan
of one GHL contact (CA-3 … CA-6) and when its snapshot is doubted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.payloads.aloware import AlowareContactEvent
from services.domain.contact import CanonicalContact, aloware_to_canonical
from services.ghl_sync.rules.contact import (
    SOT_SKIP,
    SYNC_ALOWARE_TO_GHL,
    SYNC_GHL_TO_ALOWARE,
    KnownGhlContact,
    plan_contact_upsert,
    snapshot_doubt,
)
from services.ghl_sync.rules.ops import (
    AddGhlTags,
    ContactEventState,
    ContactUpserted,
    ContactWrites,
    CreateGhlContact,
    Done,
    KnownMapping,
    LockContact,
    LogSync,
    ReadContactEvent,
    SyncGhlContact,
    UpdateGhlContact,
)
from services.infra.errors import Permanent
from tests.unit.ghl_sync.ghl_plans import NOW, Answers, ctx, event, plan_of, run

CREATED = "aloware/contact-created.json"
ADA = AlowareContactEvent.model_validate(event(CREATED).payload).body
ADA_HASH = aloware_to_canonical(ADA).projection_hash()
ADA_AT = datetime(2025, 3, 4, 15, 12, tzinfo=UTC)  # the fixture's updated_at
MAPPED = KnownMapping("ghlAda", "+15555550101", ADA_AT - timedelta(days=1))


def ca(status: str, rule: str, target: str | None = None, message: str | None = None) -> LogSync:
    return LogSync("aloware_to_ghl", "contact", "7000001", status, rule, target, message)  # type: ignore[arg-type]


# the lock, then one read: echo ledger, mapping and (coalescing) a newer pending event
HEAD = [LockContact("+15555550101"), ReadContactEvent("7000001", ADA_HASH, ADA_AT)]
UNKNOWN = (ReadContactEvent, ContactEventState(False, None))  # not an echo, no mapping, the newest


def seen(mapping: KnownMapping | None = None, *, echo: bool = False) -> tuple[Any, ContactEventState]:
    return (ReadContactEvent, ContactEventState(echo, mapping))


CASES: list[tuple[str, tuple[str, ...], bool, Answers, list[Any], Done]] = [  # name, off, replay, …
    (
        "a new Aloware contact is found or created in GHL and logged",
        (),
        False,
        [UNKNOWN, (SyncGhlContact, ContactUpserted("ghlNew", True))],
        [*HEAD, SyncGhlContact(ADA, None, ADA_AT), ca("success", "CA", "ghlNew")],
        Done("applied"),
    ),
    (
        "a mapped contact older than the event is brought up to date",
        (),
        False,
        [seen(MAPPED), (SyncGhlContact, ContactUpserted("ghlAda", True))],
        [*HEAD, SyncGhlContact(ADA, MAPPED, ADA_AT), ca("success", "CA", "ghlAda")],
        Done("applied"),
    ),
    (
        "nothing differing is nothing written",
        (),
        False,
        [UNKNOWN, (SyncGhlContact, ContactUpserted("ghlAda", False))],
        [*HEAD, SyncGhlContact(ADA, None, ADA_AT), ca("skipped", "CA", "ghlAda", "no_changes")],
        Done("skipped", "no_changes"),
    ),
    (
        "CA-0: with Aloware contacts switched off nothing is read or written",
        (SYNC_ALOWARE_TO_GHL,),
        False,
        [],
        [ca("skipped", "CA-0", message=SOT_SKIP)],
        Done("skipped", SOT_SKIP),
    ),
    (
        "LP-1: the echo of our own write to Aloware is not synced back",
        (),
        False,
        [seen(echo=True)],
        [*HEAD, ca("skipped", "LP-1", message="middleware-originated")],
        Done("echo", "middleware-originated"),
    ),
    (
        "CA-2: an event older than the mapping's watermark is stale",
        (),
        False,
        [seen(KnownMapping("ghlAda", None, ADA_AT + timedelta(seconds=1)))],
        [*HEAD, ca("skipped", "CA-2", "ghlAda", "stale_event")],
        Done("skipped", "stale_event"),
    ),
    (
        "CA-2: a redelivery of the newest event is stale",
        (),
        False,
        [seen(KnownMapping("ghlAda", None, ADA_AT))],
        [*HEAD, ca("skipped", "CA-2", "ghlAda", "stale_event")],
        Done("skipped", "stale_event"),
    ),
    (
        "a replay of the newest event re-checks GHL against it",
        (),
        True,
        [seen(KnownMapping("ghlAda", None, ADA_AT)), (SyncGhlContact, ContactUpserted("ghlAda", False))],
        [
            HEAD[0],
            ReadContactEvent("7000001", ADA_HASH, None),  # a replay is not coalesced
            SyncGhlContact(ADA, KnownMapping("ghlAda", None, ADA_AT), ADA_AT),
            ca("skipped", "CA", "ghlAda", "no_changes"),
        ],
        Done("skipped", "no_changes"),
    ),
]


@pytest.mark.parametrize(
    ("off", "replay", "answers", "expected", "done"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_aloware_contact(
    off: tuple[str, ...], replay: bool, answers: Answers, expected: list[Any], done: Done
) -> None:
    assert run(plan_of(event(CREATED), ctx(off=off, replay=replay)), answers) == (expected, done)


def test_an_event_without_updated_at_is_dated_by_its_receipt() -> None:
    envelope = event(CREATED, body={"updated_at": None})
    body = AlowareContactEvent.model_validate(envelope.payload).body
    ops, _ = run(plan_of(envelope), [UNKNOWN, (SyncGhlContact, ContactUpserted("g", True))])
    assert SyncGhlContact(body, None, NOW) in ops


def test_an_invalid_contact_payload_is_permanent() -> None:
    with pytest.raises(Permanent, match="invalid Aloware contact payload"):
        plan_of(event(CREATED, body={"id": None}))


# --- the write plan of one GHL contact (CA-3 … CA-6) ---------------------------------------
INCOMING = CanonicalContact.build(first_name="Ada", last_name="Example", phone="+15555550101", city="Springfield")
CUSTOMS = [{"id": "cfAloware", "field_value": "7000001"}]

WRITES: list[tuple[str, KnownGhlContact | None, str | None, str, ContactWrites]] = [
    (
        "a contact GHL lacks is created with the Aloware custom fields",
        None,
        "Interested",
        "merge",
        ContactWrites(
            (
                CreateGhlContact(
                    {
                        "firstName": "Ada",
                        "lastName": "Example",
                        "phone": "+15555550101",
                        "city": "Springfield",
                        "source": "aloware",
                        "tags": ["Interested"],
                        "customFields": CUSTOMS,
                    }
                ),
            )
        ),
    ),
    (
        "only differing fields, missing custom fields and the disposition tag are written",
        KnownGhlContact("g1", INCOMING.with_fields(city="Shelbyville", custom_fields=())),
        "Hot",
        "aloware",
        ContactWrites(
            (UpdateGhlContact("g1", {"city": "Springfield", "customFields": CUSTOMS}), AddGhlTags("g1", ("Hot",)))
        ),
    ),
    (
        "GHL's value wins in mode ghl",
        KnownGhlContact("g1", INCOMING.with_fields(city="Shelbyville", custom_fields=(("cfAloware", "7000001"),))),
        None,
        "ghl",
        ContactWrites(skip_reason="no_changes"),
    ),
]


@pytest.mark.parametrize(
    ("known", "disposition", "mode", "expected"), [w[1:] for w in WRITES], ids=[w[0] for w in WRITES]
)
def test_plan_contact_upsert_takes_the_mode_from_the_context(
    known: KnownGhlContact | None, disposition: str | None, mode: str, expected: ContactWrites
) -> None:
    assert plan_contact_upsert(INCOMING, known, ctx(mode=mode), disposition=disposition, customs=CUSTOMS) == expected


FRESH = INCOMING.with_fields(custom_fields=(), seen_at=NOW - timedelta(minutes=5))
DOUBTS: list[tuple[str, CanonicalContact, dict[str, Any], str | None]] = [
    ("a fresh snapshot is trusted", FRESH, {}, None),
    ("a replay re-reads GHL", FRESH, {"replay": True}, "replay"),
    ("without CG nothing refreshes the snapshot", FRESH, {"off": (SYNC_GHL_TO_ALOWARE,)}, "ghl_to_aloware_off"),
    ("CG skips contacts without phone", FRESH.with_fields(phone=None), {}, "no_phone"),
    (
        "custom fields CA-6 needs are not in an older snapshot",
        FRESH.with_fields(custom_fields=None),
        {},
        "custom_fields_unknown",
    ),
    ("an old snapshot", FRESH.with_fields(seen_at=NOW - timedelta(hours=2)), {}, "age"),
    ("a snapshot of unknown age", FRESH.with_fields(seen_at=None), {}, "age"),
]


@pytest.mark.parametrize(("snapshot", "context", "doubt"), [d[1:] for d in DOUBTS], ids=[d[0] for d in DOUBTS])
def test_snapshot_doubt(snapshot: CanonicalContact, context: dict[str, Any], doubt: str | None) -> None:
    assert snapshot_doubt(snapshot, CUSTOMS, ctx(**context)) == doubt
