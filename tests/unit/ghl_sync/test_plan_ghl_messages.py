"""M-1 (with O-3's keywords) and M-4 as tables (spec/outbound.md §1.8, §1.9): a texting
fixture + what PostgreSQL knows (message mappings, the agent's messages) + what GHL
answers → the operations and how the delivery ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.domain.optout import Decision
from services.ghl_sync.rules.messages import ECHO_WINDOW, body_sha256, media_urls
from services.ghl_sync.rules.ops import (
    AddTags,
    AgentMessage,
    Done,
    EchoOfAgentMessage,
    FindAgentMessage,
    FindOutboundEcho,
    FindSyncedMessage,
    LinkTextingMessage,
    LockContact,
    LogSync,
    PostMessageOnce,
    RecordDeliveryStatus,
    RecordOptOut,
    RemoveTags,
    ReportMessageStatus,
    ResolveConversation,
    ResolveTextingContact,
    SyncLogFor,
)
from services.ghl_sync.rules.optouts import SMS_OPTOUT_TAGS
from services.infra.errors import Permanent
from tests.unit.ghl_sync.ghl_plans import NOW, Answers, event, plan_of, run

FOUND: Answers = [
    (ResolveTextingContact, "ghlT"),
    (ResolveConversation, "conv1"),
    (PostMessageOnce, "gm1"),
    (RecordOptOut, Decision(True, "opted_out")),
    (AddTags, list(SMS_OPTOUT_TAGS)),
]


def log(message_id: str) -> SyncLogFor:
    return SyncLogFor("texting_to_ghl", "message", message_id)


def post(
    fixture: str,
    message_id: str,
    conversation: str,
    direction: str,
    phone: str,
    text: str | None,
    date: str,
    attachments: tuple[str, ...] = (),
) -> PostMessageOnce:
    inbound = direction == "inbound"
    return PostMessageOnce(
        texting_message_id=message_id,
        event_key=event(fixture).dedupe_key,
        texting_conversation_id=conversation,
        direction=direction,  # type: ignore[arg-type]
        from_number=phone if inbound else "+15555550100",
        to_number="+15555550100" if inbound else phone,
        body=text,
        date=date,
        attachments=attachments,
        ghl_id="ghlT",
        conversation_id="conv1",
        log=log(message_id),
    )


RECEIVED = post(
    "texting/message.received.json",
    "txtMsgDemo-0001",
    "verityChatDemo-0001",
    "inbound",
    "+15555550101",
    "Hi, is the 10am call still on for Tuesday?",
    "2025-03-10T15:00:00Z",
)
SENT = post(
    "texting/message.sent.json",
    "txtMsgDemo-0002",
    "verityChatDemo-0001",
    "outbound",
    "+15555550101",
    "Yes Ada, talk to you Tuesday at 10am.",
    "2025-03-10T15:02:00Z",
)
SENT_ECHO = FindOutboundEcho(
    (), "+15555550101", body_sha256("Yes Ada, talk to you Tuesday at 10am."), NOW - ECHO_WINDOW
)
MMS_URLS = ("https://media.example.com/a.jpg", "https://media.example.com/b.png")

MESSAGES: list[tuple[str, str, dict[str, Any], Answers, list[Any], Done]] = [
    (
        "M-1: an inbound text goes into the texting contact's conversation once",
        "texting/message.received.json",
        {},
        FOUND,
        [
            FindSyncedMessage("txtMsgDemo-0001"),
            LockContact("+15555550101"),
            ResolveTextingContact("+15555550101"),
            ResolveConversation("ghlT"),
            RECEIVED,
            log("txtMsgDemo-0001").row("success", "M-1", target_id="ghlT", details={"ghl_message_id": "gm1"}),
        ],
        Done("applied"),
    ),
    (
        "M-1: a text posted before is only logged",
        "texting/message.received.json",
        {},
        [(FindSyncedMessage, "gmOld")],
        [
            FindSyncedMessage("txtMsgDemo-0001"),
            log("txtMsgDemo-0001").row("success", "M-1", target_id="gmOld", message="already_synced"),
        ],
        Done("skipped", "already_synced"),
    ),
    (
        "M-1.7: an MMS carries its media as attachments",
        "texting/message.received.json",
        {"mediaUrls": list(MMS_URLS), "body": ""},
        FOUND,
        [
            FindSyncedMessage("txtMsgDemo-0001"),
            LockContact("+15555550101"),
            ResolveTextingContact("+15555550101"),
            ResolveConversation("ghlT"),
            post(
                "texting/message.received.json",
                "txtMsgDemo-0001",
                "verityChatDemo-0001",
                "inbound",
                "+15555550101",
                None,
                "2025-03-10T15:00:00Z",
                MMS_URLS,
            ),
            log("txtMsgDemo-0001").row("success", "M-1", target_id="ghlT", details={"ghl_message_id": "gm1"}),
        ],
        Done("applied"),
    ),
    (
        "M-1.4/O-3: an inbound STOP opts the number out and tags the contact before the text is posted",
        "texting/message.received-stop-keyword.json",
        {},
        FOUND,
        [
            FindSyncedMessage("txtMsgDemo-0005"),
            LockContact("+15555550104"),
            RecordOptOut("+15555550104", "opted_out", "texting", "STOP", NOW),
            ResolveTextingContact("+15555550104"),
            AddTags("ghlT", SMS_OPTOUT_TAGS),
            LogSync(
                "texting_to_ghl",
                "optout",
                "+15555550104",
                "success",
                "O-3",
                "ghlT",
                "opted_out (STOP)",
                {"tags_changed": ["DNC-SMS", "SMS Opted Out"]},
            ),
            ResolveTextingContact("+15555550104"),
            ResolveConversation("ghlT"),
            post(
                "texting/message.received-stop-keyword.json",
                "txtMsgDemo-0005",
                "verityChatDemo-0003",
                "inbound",
                "+15555550104",
                "Stop",
                "2025-03-10T16:10:00Z",
            ),
            log("txtMsgDemo-0005").row("success", "M-1", target_id="ghlT", details={"ghl_message_id": "gm1"}),
        ],
        Done("applied"),
    ),
    (
        "O-3: START opts back in and removes the tags; a refused opt-in is logged skipped",
        "texting/message.received-stop-keyword.json",
        {"body": "start!"},
        [(RecordOptOut, Decision(False, "opted_out", "opt_in_blocked_by_ghl")), (RemoveTags, []), *FOUND],
        [
            FindSyncedMessage("txtMsgDemo-0005"),
            LockContact("+15555550104"),
            RecordOptOut("+15555550104", "opted_in", "texting", "START", NOW),
            ResolveTextingContact("+15555550104"),
            RemoveTags("ghlT", SMS_OPTOUT_TAGS),
            LogSync(
                "texting_to_ghl",
                "optout",
                "+15555550104",
                "skipped",
                "O-3",
                "ghlT",
                "opt_in_blocked_by_ghl",
                {"tags_changed": []},
            ),
            ResolveTextingContact("+15555550104"),
            ResolveConversation("ghlT"),
            post(
                "texting/message.received-stop-keyword.json",
                "txtMsgDemo-0005",
                "verityChatDemo-0003",
                "inbound",
                "+15555550104",
                "start!",
                "2025-03-10T16:10:00Z",
            ),
            log("txtMsgDemo-0005").row("success", "M-1", target_id="ghlT", details={"ghl_message_id": "gm1"}),
        ],
        Done("applied"),
    ),
    (
        "O-3: a sentence containing stop is only a message",
        "texting/message.received-false-stop.json",
        {"body": "Please don't stop calling"},
        FOUND,
        [
            FindSyncedMessage("txtMsgDemo-0006"),
            LockContact("+15555550101"),
            ResolveTextingContact("+15555550101"),
            ResolveConversation("ghlT"),
            post(
                "texting/message.received-false-stop.json",
                "txtMsgDemo-0006",
                "verityChatDemo-0001",
                "inbound",
                "+15555550101",
                "Please don't stop calling",
                "2025-03-10T16:20:00Z",
            ),
            log("txtMsgDemo-0006").row("success", "M-1", target_id="ghlT", details={"ghl_message_id": "gm1"}),
        ],
        Done("applied"),
    ),
    (
        "M-1: an outbound text that no agent sent is posted as outbound",
        "texting/message.sent.json",
        {},
        FOUND,
        [
            SENT_ECHO,
            FindSyncedMessage("txtMsgDemo-0002"),
            LockContact("+15555550101"),
            ResolveTextingContact("+15555550101"),
            ResolveConversation("ghlT"),
            SENT,
            log("txtMsgDemo-0002").row("success", "M-1", target_id="ghlT", details={"ghl_message_id": "gm1"}),
        ],
        Done("applied"),
    ),
    (
        "M-1.2: the echo of an agent's SMS is reported delivered, not posted again",
        "texting/message.sent.json",
        {"raw": {"correlationId": "corr-1", "chatMessageId": "chat-1"}},
        [(FindOutboundEcho, EchoOfAgentMessage(7, "gmAgent", None))],
        [
            FindOutboundEcho(("corr-1", "chat-1"), "+15555550101", SENT_ECHO.body_sha256, NOW - ECHO_WINDOW),
            LinkTextingMessage(7, "txtMsgDemo-0002"),
            log("txtMsgDemo-0002").row("skipped", "M-1.2", target_id="gmAgent", message="echo_of_ghl_outbound"),
            ReportMessageStatus("gmAgent", "delivered"),
        ],
        Done("echo", "echo_of_ghl_outbound"),
    ),
    (
        "M-1.2: an echo already linked to its texting message is not linked again",
        "texting/message.sent.json",
        {},
        [(FindOutboundEcho, EchoOfAgentMessage(7, "gmAgent", "txtMsgDemo-0002"))],
        [
            SENT_ECHO,
            log("txtMsgDemo-0002").row("skipped", "M-1.2", target_id="gmAgent", message="echo_of_ghl_outbound"),
            ReportMessageStatus("gmAgent", "delivered"),
        ],
        Done("echo", "echo_of_ghl_outbound"),
    ),
]


@pytest.mark.parametrize(
    ("fixture", "changes", "answers", "expected", "done"), [c[1:] for c in MESSAGES], ids=[c[0] for c in MESSAGES]
)
def test_plan_message(fixture: str, changes: dict[str, Any], answers: Answers, expected: list[Any], done: Done) -> None:
    envelope = event(fixture, **changes)
    expected = [
        op
        if not isinstance(op, PostMessageOnce)
        else PostMessageOnce(**{**op.__dict__, "event_key": envelope.dedupe_key})
        for op in expected
    ]
    assert run(plan_of(envelope), answers) == (expected, done)


def test_a_text_without_the_contact_s_number_is_permanent() -> None:
    ops, error = run(plan_of(event("texting/message.received.json", **{"from": "not a number"})))
    assert ops == [] and isinstance(error, Permanent) and error.reason == "No phone number in payload"


def test_media_urls_are_read_from_the_message_first_each_once() -> None:
    payload = {
        "message": {"attachments": [{"url": "https://a/1.jpg"}, "https://a/1.jpg", "ftp://x"]},
        "mediaUrl": "https://top/2.jpg",
    }
    assert media_urls(payload) == ["https://a/1.jpg"]
    assert media_urls({"media_url": " http://b/3.gif "}) == ["http://b/3.gif"]


def m4(message_id: str, status: str, **rest: Any) -> LogSync:
    return log(message_id).row(status, "M-4", **rest)  # type: ignore[arg-type]


STATUSES: list[tuple[str, str, dict[str, Any], Answers, list[Any], Done]] = [
    (
        "M-4: delivered is reported to GHL and kept on the agent's message",
        "texting/message.delivered.json",
        {},
        [(FindAgentMessage, AgentMessage(5, "gmA"))],
        [
            FindAgentMessage(("txtMsgDemo-0002",)),
            ReportMessageStatus("gmA", "delivered"),
            RecordDeliveryStatus(5, "delivered"),
            m4("txtMsgDemo-0002", "success", target_id="gmA", message="status delivered"),
        ],
        Done("applied"),
    ),
    (
        "M-4: failed is reported with the carrier's error",
        "texting/message.failed.json",
        {"raw": {"chatMessageId": "chat-9"}},
        [(FindAgentMessage, AgentMessage(6, "gmF"))],
        [
            FindAgentMessage(("txtMsgDemo-0003", "chat-9")),
            ReportMessageStatus(
                "gmF", "failed", {"code": "40300", "type": "saas", "message": "Destination number is not reachable"}
            ),
            RecordDeliveryStatus(6, "failed"),
            m4("txtMsgDemo-0003", "success", target_id="gmF", message="status failed"),
        ],
        Done("applied"),
    ),
    (
        "M-4: a status of a message no agent sent is skipped",
        "texting/message.delivered.json",
        {},
        [],
        [FindAgentMessage(("txtMsgDemo-0002",)), m4("txtMsgDemo-0002", "skipped", message="no_mapping")],
        Done("skipped", "no_mapping"),
    ),
    (
        "M-4: a status GHL has no word for is not reported",
        "texting/message.delivered.json",
        {"status": "queued"},
        [(FindAgentMessage, AgentMessage(5, "gmA"))],
        [
            FindAgentMessage(("txtMsgDemo-0002",)),
            m4("txtMsgDemo-0002", "skipped", message="status_not_reported:queued"),
        ],
        Done("skipped", "status_not_reported:queued"),
    ),
]


@pytest.mark.parametrize(
    ("fixture", "changes", "answers", "expected", "done"), [c[1:] for c in STATUSES], ids=[c[0] for c in STATUSES]
)
def test_plan_message_status(
    fixture: str, changes: dict[str, Any], answers: Answers, expected: list[Any], done: Done
) -> None:
    assert run(plan_of(event(fixture, **changes)), answers) == (expected, done)


def test_the_echo_window_is_the_context_s_clock() -> None:
    ops, _ = run(plan_of(event("texting/message.sent.json")), FOUND)
    assert ops[0] == SENT_ECHO and SENT_ECHO.since == datetime(2025, 3, 10, 17, 58, 5, tzinfo=UTC)
    assert timedelta(seconds=120) == ECHO_WINDOW
