"""M-2 as a table: provider-delivery fixture + what PostgreSQL knows (the send's claim, the
opt-out registry) + context (+ the executor's answer) → the operations and the outcome
(spec/outbound.md §1.8, O-5a)."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.payloads.provider import ProviderOutboundMessage
from services.infra.delivery import Outcome
from services.infra.errors import OutcomeUnknown, Permanent
from services.verity_sync.rules.ops import VERITY_SEND, LogSync, ReportStatus, SendSmsOnce, SmsSent, SyncSubject
from services.verity_sync.rules.provider_message import (
    ATTACHMENTS_DROPPED,
    ATTACHMENTS_ERROR,
    OPTED_OUT_ERROR,
    KnownSend,
    plan_send_sms,
)
from tests.conftest import load_fixture
from tests.unit.verity_sync.verity_plans import Answers, ctx, run

FIXTURE = "ghl-provider-delivery/ProviderOutboundMessage-sms.json"
MESSAGE_ID = "ghlMsgDemo0000000002"
TEXT = "Hi Ada, confirming our call on Tuesday at 10am."
SUBJECT = SyncSubject("ghl_to_texting", "message", MESSAGE_ID)
PHOTO = {"url": "https://example.com/photo.jpg", "type": "image/jpeg"}


def sms(**changes: Any) -> ProviderOutboundMessage:
    return ProviderOutboundMessage.model_validate({**load_fixture(FIXTURE), **changes})


def send(log: LogSync, body: str = TEXT, to: str = "+15555550101") -> SendSmsOnce:
    return SendSmsOnce(MESSAGE_ID, to, body, "ghlContactAda0000001", log)


SENT = [(SendSmsOnce, SmsSent("sent", "vmsg-1"))]
CASES: list[tuple[str, dict[str, Any], KnownSend, Answers, list[Any], Outcome]] = [
    (
        "an agent's SMS is sent once, keyed by GHL's message id",
        {},
        KnownSend(),
        SENT,
        [send(LogSync("M-2", "success", SUBJECT))],
        Outcome("applied"),
    ),
    (
        "a number GHL sends in national form is sent to in E.164",
        {"phone": "(555) 555-0101"},
        KnownSend(),
        SENT,
        [send(LogSync("M-2", "success", SUBJECT))],
        Outcome("applied"),
    ),
    (
        "another delivery sent it while this one waited for the claim",
        {},
        KnownSend(),
        [(SendSmsOnce, SmsSent("already_sent"))],
        [send(LogSync("M-2", "success", SUBJECT))],
        Outcome("skipped", "already_sent"),
    ),
    (
        "a replay of a sent message sends nothing",
        {},
        KnownSend(settled="done"),
        [],
        [],
        Outcome("skipped", "already_sent"),
    ),
    (
        "a sent message stays sent when its number opted out since (GHL is not told it failed)",
        {},
        KnownSend(settled="done", opted_out=True),
        [],
        [],
        Outcome("skipped", "already_sent"),
    ),
    (
        "an opted-out number is never sent to, and GHL is told",
        {},
        KnownSend(opted_out=True),
        [],
        [
            LogSync("M-2", "skipped", SUBJECT, "recipient_opted_out"),
            ReportStatus(MESSAGE_ID, "failed", OPTED_OUT_ERROR),
        ],
        Outcome("skipped", "recipient_opted_out"),
    ),
    (
        "an MMS goes out as its text, attachments dropped and noted",
        {"attachments": [PHOTO]},
        KnownSend(),
        SENT,
        [send(LogSync("M-2", "success", SUBJECT, ATTACHMENTS_DROPPED, details={ATTACHMENTS_DROPPED: 1}))],
        Outcome("applied", ATTACHMENTS_DROPPED),
    ),
    (
        "an MMS without text: nothing to send, GHL told first, then logged",
        {"attachments": [PHOTO], "message": " "},
        KnownSend(),
        [],
        [
            ReportStatus(MESSAGE_ID, "failed", ATTACHMENTS_ERROR),
            LogSync("M-2", "skipped", SUBJECT, ATTACHMENTS_DROPPED, details={ATTACHMENTS_DROPPED: 1}),
        ],
        Outcome("skipped", ATTACHMENTS_DROPPED),
    ),
]


@pytest.mark.parametrize(
    ("changes", "known", "answers", "ops", "outcome"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_send_sms(
    changes: dict[str, Any], known: KnownSend, answers: Answers, ops: list[Any], outcome: Outcome
) -> None:
    assert run(plan_send_sms(sms(**changes), known, ctx(VERITY_SEND)), answers) == (ops, outcome)


def test_a_send_whose_outcome_is_unknown_is_never_resent() -> None:
    known = KnownSend(settled="unknown", detail="verity timeout: ReadTimeout")
    ops, error = run(plan_send_sms(sms(), known, ctx(VERITY_SEND)))
    assert ops == []
    assert isinstance(error, OutcomeUnknown)
    assert error.reason == (
        f"outcome_unknown: send-message for correlationId {MESSAGE_ID} (verity timeout: "
        f"ReadTimeout); check Verity, then resolve the claim m2:{MESSAGE_ID}"
    )


@pytest.mark.parametrize("changes", [{"phone": None}, {"phone": "not a number"}, {"message": None}, {"message": ""}])
def test_a_message_without_phone_or_text_is_permanent(changes: dict[str, Any]) -> None:
    ops, error = run(plan_send_sms(sms(**changes), KnownSend(), ctx(VERITY_SEND)))
    assert ops == [] and type(error) is Permanent
    assert error.reason == "provider message without phone or message text"


def test_the_region_comes_from_the_context() -> None:
    """A national number is read in the context's region (DEFAULT_PHONE_REGION), not a global."""
    ops, _ = run(plan_send_sms(sms(phone="020 7946 0958"), KnownSend(), ctx(VERITY_SEND, region="GB")), SENT)
    assert [op.to for op in ops if isinstance(op, SendSmsOnce)] == ["+442079460958"]


def test_without_verity_s_key_or_url_nothing_is_sent() -> None:
    """Permanent, before any claim: what was settled or opted out still says so first."""
    ops, error = run(plan_send_sms(sms(), KnownSend(), ctx()))
    assert ops == [] and type(error) is Permanent
    assert error.reason == "VERITY_API_KEY / VERITY_BASE_URL are not set"
    assert run(plan_send_sms(sms(), KnownSend(opted_out=True), ctx()))[1] == Outcome("skipped", "recipient_opted_out")
