"""The contact rules as pure planners: no I/O, just what happened + what we know → plan."""

from __future__ import annotations

from services.aloware_sync.rules.contact import (
    CreateAlowareContact,
    UpdateAlowareContact,
    WriteBackToGhl,
    plan_ghl_contact_sync,
)
from services.domain.contact import CanonicalContact
from services.domain.merge import merge
from services.ghl_sync.rules.contact import (
    AddGhlTags,
    CreateGhlContact,
    KnownGhlContact,
    UpdateGhlContact,
    plan_contact_upsert,
)

ADA = CanonicalContact.build(
    first_name="Ada", last_name="Example", email="ada@example.com", phone="(555) 555-0101", city="Springfield"
)


def test_unknown_contact_is_created_with_mapped_fields_and_disposition_tag() -> None:
    plan = plan_contact_upsert(
        ADA, None, mode="merge", disposition="Interested", customs=[{"id": "cf1", "field_value": "7000001"}]
    )
    [create] = plan.operations
    assert isinstance(create, CreateGhlContact)
    assert create.fields == {
        "firstName": "Ada",
        "lastName": "Example",
        "email": "ada@example.com",
        "phone": "+15555550101",
        "city": "Springfield",
        "source": "aloware",
        "tags": ["Interested"],
        "customFields": [{"id": "cf1", "field_value": "7000001"}],
    }


def test_unchanged_contact_is_skipped_and_present_tags_not_re_added() -> None:
    known = KnownGhlContact("g1", ADA.with_fields(email="ADA@example.com", tags=("interested",)))
    plan = plan_contact_upsert(ADA, known, mode="aloware", disposition="Interested", customs=[])
    assert plan.operations == () and plan.skip_reason == "no_changes"


def test_only_changed_fields_are_updated_per_mode() -> None:
    known = KnownGhlContact("g1", ADA.with_fields(city=None, first_name="Adaline"))
    incoming = ADA.with_fields(first_name="Ada", city="Shelbyville")
    aloware_wins = plan_contact_upsert(incoming, known, mode="aloware", disposition="Hot", customs=[])
    assert aloware_wins.operations == (
        UpdateGhlContact("g1", {"firstName": "Ada", "city": "Shelbyville"}),
        AddGhlTags("g1", ("Hot",)),
    )
    ghl_wins = plan_contact_upsert(incoming, known, mode="ghl", disposition=None, customs=[])
    assert ghl_wins.operations == (UpdateGhlContact("g1", {"city": "Shelbyville"}),)  # fills only


def test_merge_prefers_ghl_but_fills_gaps_and_keeps_the_longer_name() -> None:
    ghl = ADA.with_fields(city=None, email="ada@example.com")
    alo = ADA.with_fields(first_name="Ada Lovelace", email="other@example.com", city="Springfield")
    merged, decisions = merge(ghl, alo)
    assert (merged.first_name, merged.email, merged.city) == ("Ada Lovelace", "ada@example.com", "Springfield")
    assert {"field": "email", "value": "ada@example.com", "source": "ghl", "reason": "conflict - prefer GHL"} in [
        d.as_dict() for d in decisions
    ]


def test_ghl_contact_without_aloware_twin_is_created_there() -> None:
    plan = plan_ghl_contact_sync(ADA, None, "merge")
    [create] = plan.operations
    assert isinstance(create, CreateAlowareContact)
    assert create.form["phone_number"] == "+15555550101" and create.form["first_name"] == "Ada"


def test_merge_mode_updates_aloware_and_writes_back_to_ghl_what_the_merge_changed() -> None:
    ghl = ADA.with_fields(city=None)
    alo = ADA.with_fields(city="Shelbyville", first_name="Ada Lovelace")
    plan = plan_ghl_contact_sync(ghl, alo, "merge")
    kinds = [type(op) for op in plan.operations]
    assert kinds == [WriteBackToGhl]
    assert plan.operations[0].fields == {"firstName": "Ada Lovelace", "city": "Shelbyville"}  # type: ignore[union-attr]
    assert plan_ghl_contact_sync(ghl, alo, "aloware").operations == ()
    ghl_mode = plan_ghl_contact_sync(ADA.with_fields(first_name="Adele"), alo, "ghl")
    assert [type(op) for op in ghl_mode.operations] == [UpdateAlowareContact]
