"""ghl-sync's dispatch table takes exactly the subjects its two lanes' durables filter on
together (contracts/streams.py GHL_SYNC_FILTERS, issue #18), and each fixture's event reaches the rule meant for it on
one of those subjects."""

from __future__ import annotations

import pytest

from contracts.streams import GHL_SYNC_FILTERS
from contracts.subjects import subject_matches
from services.ghl_sync.routes import ROUTES, route_for
from tests.unit.ghl_sync.ghl_plans import event


def test_the_table_s_subjects_are_the_durables_filter_subjects() -> None:
    assert {route.subject for route in ROUTES} == set(GHL_SYNC_FILTERS)


def test_each_event_type_has_one_route() -> None:
    keys = [(route.source, kind) for route in ROUTES for kind in route.canonical_types]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("fixture", "rule"),
    [
        ("aloware/contact-created.json", "CA"),
        ("aloware/contact-updated.json", "CA"),
        ("aloware/contact-disposed.json", "D-2"),
        ("aloware/contact-dnc-updated.json", "D-1"),
        ("aloware/contact-dnc-removed.json", "D-1"),
        ("aloware/call-disposed.json", "CL"),
        ("aloware/inbound-phone-call-completed.json", "CL"),
        ("aloware/outbound-phone-call-completed.json", "CL"),
        ("aloware/transcription-saved.json", "AR"),
        ("aloware/call-summarized.json", "AR"),
        ("aloware/recording-saved.json", "AR"),
        ("aloware/voicemail-saved.json", "AR"),
        ("aloware/communication-initiated.json", "AR"),
        ("aloware/communication-disposed.json", "AR"),
        ("aloware/appointment-saved.json", "CA"),
        ("texting/optout.stop.json", "O-2"),
        ("texting/message.received.json", "M-1"),
        ("texting/message.sent.json", "M-1"),
        ("texting/nested-message-shape.json", "M-1"),
        ("texting/message.delivered.json", "M-4"),
        ("texting/message.failed.json", "M-4"),
        ("broadcast/analytics_updated.json", "B"),
        ("broadcast/broadcast_completed.json", "B"),
    ],
)
def test_a_fixture_reaches_its_rule_on_a_filtered_subject(fixture: str, rule: str) -> None:
    envelope = event(fixture)
    route = route_for(envelope)
    assert route is not None and route.rule == rule
    assert subject_matches(route.subject, envelope.subject), (route.subject, envelope.subject)


@pytest.mark.parametrize("fixture", ["texting/optout.help.json", "texting/conversation.created.json"])
def test_events_no_rule_handles_have_no_route(fixture: str) -> None:
    assert route_for(event(fixture)) is None
