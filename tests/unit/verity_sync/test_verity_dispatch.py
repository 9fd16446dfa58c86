"""verity-sync's dispatch table takes exactly the subjects its durable filters on
(contracts/streams.py VERITY_SYNC), and each fixture's event reaches the rule meant for it."""

from __future__ import annotations

import pytest

from contracts.streams import VERITY_SYNC
from contracts.subjects import subject_matches
from services.verity_sync.service import ROUTES, VeritySync, route_for
from tests.unit.verity_sync.verity_plans import ghl_event, provider_event


def test_every_route_lies_inside_the_durable_s_filters() -> None:
    for route in ROUTES:
        assert any(subject_matches(f, route.subject) for f in VERITY_SYNC.filter_subjects), route.subject


def test_every_filtered_subject_has_a_route() -> None:
    """A catch-all per filter: no subject the durable delivers falls through the table."""
    for subject in VERITY_SYNC.filter_subjects:
        assert any(subject_matches(r.subject, subject) for r in ROUTES), subject


def test_no_route_is_shadowed_by_an_earlier_one() -> None:
    for i, route in enumerate(ROUTES):
        assert not any(subject_matches(earlier.subject, route.subject) for earlier in ROUTES[:i]), route.subject


@pytest.mark.parametrize(
    ("fixture", "handler"),
    [
        ("ghl/ContactUpdate.json", VeritySync.forward),
        ("ghl/workflow-contact-webhook.json", VeritySync.forward),
        ("ghl/OpportunityStatusUpdate.json", VeritySync.forward),
        ("ghl/AppointmentCreate.json", VeritySync.forward_and_link),
        ("ghl/workflow-appointment-webhook.json", VeritySync.forward_and_link),
    ],
)
def test_ghl_webhooks_are_forwarded_and_appointments_linked(fixture: str, handler: object) -> None:
    assert route_for(ghl_event(fixture).subject).handler is handler


def test_an_agent_sms_is_sent_and_other_provider_deliveries_are_not_forwarded() -> None:
    sms = provider_event("ghl-provider-delivery/ProviderOutboundMessage-sms.json")
    email = provider_event("ghl-provider-delivery/ProviderOutboundMessage-email.json")
    assert route_for(sms.subject).handler is VeritySync.send_sms
    assert route_for(email.subject).handler is VeritySync.unhandled_provider_message
