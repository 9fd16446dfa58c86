"""Coalescing and the request-saving write plans of CA (issue #18; spec/outbound.md §0.1,
§1.2, §1.5; spec/inbound.md G2): a contact event superseded by a newer pending one ends
without any vendor call, the newest never is; a contact we have no mapping of is upserted in
mode ``aloware`` and created without a search while GHL refuses duplicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.payloads.aloware import AlowareContactEvent
from services.domain.contact import CanonicalContact
from services.ghl_sync.rules.contact import needs_duplicate_search, plan_contact_upsert
from services.ghl_sync.rules.ops import (
    ContactEventState,
    ContactUpserted,
    ContactWrites,
    CreateGhlContact,
    Done,
    KnownMapping,
    LogSync,
    ReadContactEvent,
    SyncGhlContact,
    UpsertGhlContact,
)
from tests.unit.ghl_sync.ghl_plans import ctx, event, plan_of, run

CREATED = "aloware/contact-created.json"
ADA = AlowareContactEvent.model_validate(event(CREATED).payload).body
ADA_AT = datetime(2025, 3, 4, 15, 12, tzinfo=UTC)
MAPPED = KnownMapping("ghlAda", "+15555550101", ADA_AT - timedelta(days=1))
NEWER = "0b7c2d6e-8f65-4f55-9b0e-4f2f4a4b1a01"


def reads(ops: list[object]) -> list[ReadContactEvent]:
    return [op for op in ops if isinstance(op, ReadContactEvent)]


def test_an_event_a_newer_pending_one_supersedes_ends_without_writing() -> None:
    ops, done = run(
        plan_of(event(CREATED)),
        [(ReadContactEvent, ContactEventState(False, MAPPED, NEWER)), (SyncGhlContact, ContactUpserted("g", True))],
    )
    assert [r.event_at for r in reads(ops)] == [ADA_AT]  # asked with the event's time
    assert not any(isinstance(op, SyncGhlContact) for op in ops)
    assert ops[-1] == LogSync(
        "aloware_to_ghl", "contact", "7000001", "skipped", "CA", "ghlAda", "superseded", {"superseded_by": NEWER}
    )
    assert done == Done("skipped", "superseded")


def test_the_newest_event_is_the_one_that_writes() -> None:
    ops, done = run(
        plan_of(event(CREATED)),
        [(ReadContactEvent, ContactEventState(False, None, None)), (SyncGhlContact, ContactUpserted("g", True))],
    )
    assert SyncGhlContact(ADA, None, ADA_AT) in ops
    assert done == Done("applied")


def test_a_replay_is_not_coalesced() -> None:
    ops, done = run(
        plan_of(event(CREATED), ctx(replay=True)),
        [(ReadContactEvent, ContactEventState(False, None)), (SyncGhlContact, ContactUpserted("g", True))],
    )
    assert [r.event_at for r in reads(ops)] == [None]  # no newer event asked for
    assert done == Done("applied")


def test_a_stale_event_is_skipped_as_stale_even_with_a_newer_one_pending() -> None:
    stale = KnownMapping("g", None, ADA_AT + timedelta(1))
    _, done = run(plan_of(event(CREATED)), [(ReadContactEvent, ContactEventState(False, stale, NEWER))])
    assert done == Done("skipped", "stale_event")


INCOMING = CanonicalContact.build(first_name="Ada", last_name="Example", phone="+15555550101", email="ada@example.com")
CUSTOMS = [{"id": "cfAloware", "field_value": "7000001"}]


def test_mode_aloware_upserts_a_contact_we_have_no_mapping_of_without_tags_in_the_body() -> None:
    writes = plan_contact_upsert(INCOMING, None, ctx(mode="aloware"), disposition="Hot", customs=CUSTOMS)
    fields = {
        "firstName": "Ada",
        "lastName": "Example",
        "phone": "+15555550101",
        "email": "ada@example.com",
        "customFields": CUSTOMS,
    }
    assert writes == ContactWrites((UpsertGhlContact(fields, ("Hot",)),))


@pytest.mark.parametrize("mode", ["merge", "ghl"])
def test_modes_that_keep_ghl_values_create_a_contact_we_have_no_mapping_of(mode: str) -> None:
    writes = plan_contact_upsert(INCOMING, None, ctx(mode=mode), disposition="Hot", customs=CUSTOMS)
    [create] = writes.operations
    assert isinstance(create, CreateGhlContact)
    assert create.fields["tags"] == ["Hot"] and create.fields["customFields"] == CUSTOMS  # one request


@pytest.mark.parametrize(
    ("mode", "allowed", "search"),
    [
        ("aloware", True, False),  # the upsert finds the contact whatever the setting
        ("aloware", None, False),
        ("merge", False, False),  # the create's duplicate 400 finds it
        ("ghl", False, False),
        ("merge", True, True),  # a create would add a duplicate: CA-2 (b), (c) first
        ("ghl", True, True),
        ("merge", None, True),  # GHL did not say: the safe side
    ],
)
def test_a_duplicate_search_runs_only_where_the_write_cannot_find_the_contact(
    mode: str, allowed: bool | None, search: bool
) -> None:
    assert needs_duplicate_search(mode, allowed) is search
