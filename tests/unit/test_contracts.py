"""Contracts: every fixture parses into its typed model and maps to the right subject."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import ReplayRequested, SweepRequested, WebhookEvent
from contracts.envelope import AuthInfo
from contracts.payloads import UntypedPayload, parse_payload
from contracts.subjects import EntityType, Source, fallback_subject, webhook_subject
from contracts.tokens import normalise_token
from services.ingress.classify import (
    Classified,
    Ignored,
    classify_aloware,
    classify_ghl,
)
from tests.conftest import load_fixture
from tests.support.contracts import ALL_FIXTURES, EXPECTED, classify

# fixture → (subject, canonical type, entity id) as spec/inbound.md §8 requires.


def test_every_fixture_has_an_expectation() -> None:
    assert set(ALL_FIXTURES) == set(EXPECTED)


@pytest.mark.parametrize("relative", ALL_FIXTURES)
def test_fixture_parses_into_its_typed_model_and_subject(relative: str) -> None:
    body = load_fixture(relative)
    result = classify(relative, body)
    expected = EXPECTED[relative]
    if isinstance(expected, str):
        assert result == Ignored(expected)
        return
    assert isinstance(result, Classified)
    subject, canonical, entity_id = expected
    assert webhook_subject(result.source, result.entity_type, result.event_type) == subject
    assert result.canonical_type == canonical
    assert result.entity_id == entity_id
    model = parse_payload(result.source, result.canonical_type, body)
    if result.canonical_type not in ("ghl.other", "aloware.other"):
        assert not isinstance(model, UntypedPayload), type(model)
    # round trip: dump → parse gives the same model, and the envelope survives the wire
    again = type(model).model_validate(model.model_dump(by_alias=True))
    assert again == model
    event = result.envelope(AuthInfo(method="hmac", verified=True), body)
    assert WebhookEvent.from_bytes(event.to_bytes()) == event
    assert event.subject == subject


def test_numeric_aloware_ids_become_strings() -> None:
    body = load_fixture("aloware/call-disposed-numeric-ids.json")
    model = parse_payload(Source.ALOWARE, "call.disposed", body)
    assert model.body.id == "9100001"  # type: ignore[attr-defined]
    assert model.body.contact_id == "7000001"  # type: ignore[attr-defined]


def test_workflow_tags_string_is_split_not_spread() -> None:
    body = load_fixture("ghl/workflow-contact-webhook.json")
    model = parse_payload(Source.GHL, "contact.updated", body)
    assert model.tags == ["new lead", "call_now"]  # type: ignore[attr-defined]


def test_unknown_event_types_map_to_the_fallback_subject() -> None:
    ghl = classify_ghl({"type": "TaskCreate", "locationId": "L", "id": "t1"}, expected_location_id="L")
    assert isinstance(ghl, Classified)
    assert ghl.canonical_type == "ghl.other"
    assert webhook_subject(ghl.source, ghl.entity_type, ghl.event_type) == "webhooks.ghl.unknown.task_create"
    alo = classify_aloware({"event": "Brand New Thing!", "body": {"id": 5}}, allow_list=[])
    assert isinstance(alo, Classified)
    assert alo.entity_type is EntityType.UNKNOWN
    assert fallback_subject("aloware", alo.event_type) == "webhooks.aloware.unknown.brand_new_thing"
    assert webhook_subject("nonsense", "nonsense", "") == "webhooks.unknown.unknown.unknown"


def test_event_without_entity_id_is_published_for_the_record() -> None:
    result = classify_aloware({"event": "Call Disposed", "body": {}}, allow_list=[])
    assert isinstance(result, Classified)
    assert result.outcome_hint == "ignored:no_entity_id"
    assert result.entity_type is EntityType.UNKNOWN


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("ContactUpdate", "contact_update"),
        ("Call Disposed", "call_disposed"),
        ("OutboundPhoneCall-Completed", "outbound_phone_call_completed"),
        ("contact.updated", "contact_updated"),
        ("opportunity.statusChanged", "opportunity_status_changed"),
        ("Contact DNC Updated", "contact_dnc_updated"),
        ("ContactDndUpdate", "contact_dnd_update"),
        ("", "unknown"),
        ("!!!", "unknown"),
    ],
)
def test_token_normalisation_examples_from_the_spec(name: str, token: str) -> None:
    assert normalise_token(name) == token


@given(st.text(max_size=300))
def test_normalised_tokens_are_always_valid_subject_tokens(name: str) -> None:
    token = normalise_token(name)
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9_]{0,62}[a-z0-9])?", token)


def test_commands_round_trip_and_validate() -> None:
    sweep = SweepRequested(slot="2026-01-01T00:05:00Z")
    assert SweepRequested.model_validate_json(sweep.model_dump_json()) == sweep
    replay = ReplayRequested(subject="webhooks.ghl.>", from_seq=1, to_seq=10, dry_run=True)
    assert ReplayRequested.model_validate_json(replay.model_dump_json()) == replay
    with pytest.raises(ValueError):
        ReplayRequested()
    with pytest.raises(ValueError):
        ReplayRequested(subject="webhooks.>", from_seq=10, to_seq=2)
