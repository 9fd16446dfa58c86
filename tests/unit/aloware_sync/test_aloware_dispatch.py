"""aloware-sync's dispatch table: its subjects are exactly the durable's filter subjects, every
fixture the durable takes reaches its rules' flow, and the context carries the settings'
switches (no planner reads the settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contracts.streams import ALOWARE_SYNC
from contracts.subjects import subject_matches
from services.aloware_sync.rules.known import (
    FLAG_AGENT_LIST_SYNC,
    FLAG_ALOWARE_SEQUENCES,
    FLAG_GHL_CONTACTS_TO_ALOWARE,
    FLAG_POWER_DIALER_LISTS,
    FLAG_TEXTING_TO_ALOWARE,
    LIMIT_ECHO_WINDOW_S,
)
from services.aloware_sync.rules.ops import (
    HoldContactLock,
    IsEcho,
    ReadGhlContact,
    ReadMapping,
    RecordOptOut,
)
from services.aloware_sync.service import ROUTES, plan_event, policy_from, rule_context
from services.infra.delivery import Outcome
from services.infra.settings import Settings
from tests.conftest import WEBHOOK_FIXTURES
from tests.unit.aloware_sync.aloware_plans import LISTS_ON, ctx, event, run

POLICY = policy_from(Settings(_env_file=None))


def test_the_table_has_one_route_per_filter_subject_of_the_durable() -> None:
    assert sorted(ROUTES) == sorted(ALOWARE_SYNC.filter_subjects)
    assert len(set(ALOWARE_SYNC.filter_subjects)) == len(ALOWARE_SYNC.filter_subjects)


def _fixtures() -> list[str]:
    taken = []
    for path in sorted(Path(WEBHOOK_FIXTURES).glob("*/*.json")):
        relative = str(path.relative_to(WEBHOOK_FIXTURES))
        if relative.split("/")[0] not in ("ghl", "aloware", "texting"):
            continue
        try:
            incoming = event(relative)
        except AssertionError:  # a probe or an ignored body: never published
            continue
        if any(subject_matches(f, incoming.subject) for f in ALOWARE_SYNC.filter_subjects):
            taken.append(relative)
    return taken


# what each fixture's flow asks first (every switch on), or the outcome when it asks nothing
FIRST: dict[str, Any] = {
    "ghl/ContactCreate.json": IsEcho,  # CG: LP-1 on the marketplace body
    "ghl/ContactUpdate.json": IsEcho,
    "ghl/ContactTagUpdate.json": IsEcho,
    "ghl/ContactDelete.json": ReadMapping,  # D-3
    "ghl/contact.deleted.json": ReadMapping,
    "ghl/ContactDndUpdate.json": ReadGhlContact,  # O-7
    "ghl/contact.updated.json": ReadGhlContact,  # CG on a dotted body
    "ghl/workflow-contact-webhook.json": ReadGhlContact,
    "ghl/tag.added.json": ReadMapping,  # L: is the contact in Aloware yet
    "ghl/tag.removed.json": ReadMapping,
    "ghl/opportunity.statusChanged.json": ReadMapping,
    "ghl/OpportunityStatusUpdate.json": ReadMapping,
    "texting/optout.stop.json": RecordOptOut,  # R3
    "texting/message.received-stop-keyword.json": HoldContactLock,  # R3, recorded under the lock
    "texting/message.received.json": ReadMapping,  # M-3
    "texting/message.received-false-stop.json": ReadMapping,
    "texting/message.sent.json": ReadMapping,
    "texting/nested-message-shape.json": ReadMapping,
    "texting/message.delivered.json": Outcome("skipped", "Unhandled event type: message.delivered"),
    "texting/message.failed.json": Outcome("skipped", "Unhandled event type: message.failed"),
    "aloware/contact-dnc-updated.json": RecordOptOut,  # D-1's list half
    "aloware/contact-dnc-removed.json": Outcome("ignored", "no_opt_out_for_lists"),
    "aloware/contact-updated.json": ReadMapping,  # S
}
ALL_ON = ctx(*LISTS_ON, FLAG_GHL_CONTACTS_TO_ALOWARE, FLAG_TEXTING_TO_ALOWARE, FLAG_ALOWARE_SEQUENCES)


@pytest.mark.parametrize("relative", _fixtures())
def test_every_fixture_the_durable_takes_reaches_its_rule(relative: str) -> None:
    expected = FIRST[relative]
    flow = plan_event(event(relative), POLICY, ALL_ON)
    try:
        first = next(flow)
    except StopIteration as stop:
        assert stop.value == expected
    else:
        flow.close()
        assert isinstance(first, expected), first


def test_an_event_on_no_route_is_unhandled() -> None:
    note = event("ghl/NoteCreate.json")
    assert run(plan_event(note, POLICY, ALL_ON)) == ([], Outcome("skipped", "Unhandled GHL event type: NoteCreate"))


def test_the_context_carries_the_switches_and_the_echo_window() -> None:
    defaults = rule_context(Settings(_env_file=None), 3)
    assert defaults.attempt == 3 and not defaults.replay
    assert defaults.flags == {FLAG_AGENT_LIST_SYNC, FLAG_GHL_CONTACTS_TO_ALOWARE}
    assert defaults.limit(LIMIT_ECHO_WINDOW_S, 0) == 600
    every = Settings.model_validate(
        {
            "enable_power_dialer_lists": "true",
            "enable_aloware_sequences": "true",
            "texting_sync_to_aloware": "true",
            "sync_ghl_contacts_to_aloware": False,
            "enable_agent_list_sync": "false",
            "echo_window_seconds": 30,
        }
    )
    context = rule_context(every, 1, replay=True)
    assert context.replay
    assert context.flags == {FLAG_POWER_DIALER_LISTS, FLAG_ALOWARE_SEQUENCES, FLAG_TEXTING_TO_ALOWARE}
    assert context.limit(LIMIT_ECHO_WINDOW_S, 0) == 30
