"""M-3 (a text linked to the number's Aloware contact; Aloware has no message API) as a planner
table, from the texting fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.payloads.texting import normalise_texting
from services.aloware_sync.rules.known import FLAG_TEXTING_TO_ALOWARE, KnownMapping
from services.aloware_sync.rules.messages import plan_text_link
from services.aloware_sync.rules.ops import LinkText, LogSync, LookupAlowareContact, ReadMapping
from services.clients.aloware import AlowareContactRecord
from services.infra.delivery import Outcome
from tests.unit.aloware_sync.aloware_plans import ctx, event, run

ADA = "+15555550101"
NO_API = Outcome("skipped", "aloware_has_no_message_api")


def m3(source: str, message: str, target: str | None = None) -> LogSync:
    return LogSync("M-3", "skipped", "texting_to_aloware", "message", source, target_id=target, message=message)


CASES: list[tuple[str, str, dict[str, Any], list[tuple[Any, Any]], list[Any], Outcome]] = [
    (
        "an inbound text: the sender's mapped Aloware contact",
        "texting/message.received.json",
        {},
        [(ReadMapping, KnownMapping("ghlAda", "7000001", ADA))],
        [
            ReadMapping(phone=ADA),
            LinkText("7000001", ADA, "inbound", "txtMsgDemo-0001"),
            m3("txtMsgDemo-0001", "aloware_has_no_message_api", "7000001"),
        ],
        NO_API,
    ),
    (
        "an outbound text: the recipient, found in Aloware when no mapping names it",
        "texting/message.sent.json",
        {},
        [
            (ReadMapping, KnownMapping("ghlAda", None, ADA)),
            (LookupAlowareContact, AlowareContactRecord.model_validate({"id": 7000001})),
        ],
        [
            ReadMapping(phone=ADA),
            LookupAlowareContact(ADA),
            LinkText("7000001", ADA, "outbound", "txtMsgDemo-0002"),
            m3("txtMsgDemo-0002", "aloware_has_no_message_api", "7000001"),
        ],
        NO_API,
    ),
    (
        "a number Aloware does not know: nothing linked, never created",
        "texting/message.received.json",
        {},
        [(ReadMapping, None), (LookupAlowareContact, None)],
        [ReadMapping(phone=ADA), LookupAlowareContact(ADA), m3("txtMsgDemo-0001", "no-aloware-contact")],
        Outcome("skipped", "no-aloware-contact"),
    ),
    (
        "a text without an id still links the contact mapping",
        "texting/message.received.json",
        {"messageId": None},
        [(ReadMapping, KnownMapping("ghlAda", "7000001", ADA))],
        [
            ReadMapping(phone=ADA),
            LinkText("7000001", ADA, "inbound", None),
            m3("unknown", "aloware_has_no_message_api", "7000001"),
        ],
        NO_API,
    ),
    (
        "no number to look up",
        "texting/message.received.json",
        {"from": None},
        [],
        [m3("txtMsgDemo-0001", "no-aloware-contact")],
        Outcome("skipped", "no-aloware-contact"),
    ),
]


@pytest.mark.parametrize(
    ("name", "fixture", "changes", "answers", "expected", "result"), CASES, ids=[c[0] for c in CASES]
)
def test_plan_text_link(
    name: str,
    fixture: str,
    changes: dict[str, Any],
    answers: list[tuple[Any, Any]],
    expected: list[Any],
    result: Outcome,
) -> None:
    text = event(fixture, **changes)
    flow = plan_text_link(normalise_texting(text.payload), text.canonical_type, ctx(FLAG_TEXTING_TO_ALOWARE))
    assert run(flow, answers) == (expected, result)


def test_with_texting_sync_off_nothing_is_planned() -> None:
    text = event("texting/message.received.json")
    assert run(plan_text_link(normalise_texting(text.payload), text.canonical_type, ctx())) == (
        [],
        Outcome("skipped", "texting_sync_to_aloware_disabled"),
    )
