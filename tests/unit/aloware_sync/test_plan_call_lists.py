"""L-0…L-4 (agent-managed call lists) and R3 (an opt-out off every list) as planner tables:
a GHL fixture + the contact GHL answers + what PostgreSQL knows + the context → operations."""

from __future__ import annotations

from typing import Any

import pytest

from services.aloware_sync.rules.known import (
    FLAG_AGENT_LIST_SYNC,
    FLAG_POWER_DIALER_LISTS,
    AgentState,
    AlowarePolicy,
    KnownMapping,
    ListState,
    Membership,
    OptOutListings,
)
from services.aloware_sync.rules.lists import (
    DISABLED,
    OPTED_OUT,
    contact_id,
    plan_list_membership,
    plan_opt_out_removal,
)
from services.aloware_sync.rules.ops import (
    AddToList,
    HoldContactLock,
    Inform,
    LogSync,
    MarkMembership,
    ReadAgentView,
    ReadGhlContact,
    ReadListState,
    ReadOptOutListings,
    ReadStage,
    RecordOptOut,
    RemoveFromAllLists,
    SyncStatus,
    WriteAgentState,
)
from services.aloware_sync.rules.optouts import OptOut
from services.domain.call_lists import Agent, ContactView
from services.infra.delivery import Outcome
from services.infra.errors import Permanent, RetryLater
from tests.unit.aloware_sync.aloware_plans import LISTS_ON, NOW, ctx, event, ghl_contact, run

GRACE = "ghlContactGrace00002"
PHONE = "+15555550102"
ALO = "7000002"
POLICY = AlowarePolicy()
AGENTS = (Agent("CHRIS", "ghlUserChris0000001", None, "Chris", "Owner: Chris"), Agent("RAFI", "uRafi"))
CONTACT = ghl_contact(id=GRACE, phone=PHONE, tags=["new lead", "HOT"], assignedTo=None, customFields=[])
VIEW = ContactView(None, None, None, ("new lead", "HOT"))
TAG_ADDED = event("ghl/tag.added.json")  # CALL_NOW for Grace
TAG_REMOVED = event("ghl/tag.removed.json")  # HOT off Grace
UPDATED = event("ghl/contact.updated.json")  # Grace, tags new lead + HOT
STAGE = event("ghl/opportunity.statusChanged.json")  # Grace's opportunity, stage "Follow Up"
HEAD = [ReadAgentView(CONTACT), HoldContactLock(PHONE, GRACE), ReadListState(GRACE, PHONE)]


def details(agent: str = "UNASSIGNED", reason: str = "default_unassigned") -> dict[str, Any]:
    return {"agent": agent, "agent_reason": reason, "legacy_marker": False}


def l2(status: SyncStatus, message: str, *, suffix: str = "", target: str | None = None, **who: Any) -> LogSync:
    return LogSync(
        "L-2",
        status,
        "ghl_to_aloware",
        "list",
        GRACE,
        target_id=target,
        message=message,
        details=details(**who),
        correlation_suffix=suffix,
    )


def known(
    *active: tuple[str, str],
    agent: str | None = "UNASSIGNED",
    opted_out: bool = False,
    aloware_id: str | None = ALO,
    registered: tuple[tuple[str, str], ...] | None = None,
) -> ListState:
    return ListState(
        AGENTS,
        AgentState(11, agent) if agent else None,
        opted_out,
        frozenset(active),
        frozenset(active if registered is None else registered),
        aloware_id,
    )


def answers(state: ListState, view: ContactView = VIEW, **more: Any) -> list[tuple[Any, Any]]:
    return [
        (ReadAgentView, view),
        (ReadListState, state),
        *more.get("extra", []),
        (AddToList, lambda op: f"list-{op.agent}-{op.list_key}"),
    ]


LIST_CASES: list[tuple[str, Any, tuple[str, ...], list[tuple[Any, Any]], list[Any], Outcome]] = [
    (
        "a tag added on a known contact: onto the list, the membership marked after Aloware took it",
        TAG_ADDED,
        LISTS_ON,
        answers(known()),
        [
            *HEAD,
            AddToList("UNASSIGNED", "CALL_NOW", ALO),
            MarkMembership(GRACE, "UNASSIGNED", "CALL_NOW", "active", "added"),
            l2("success", "added to DF_UNASSIGNED_CALL_NOW", target="list-UNASSIGNED-CALL_NOW"),
            WriteAgentState(GRACE, "UNASSIGNED", 11),
        ],
        Outcome("applied"),
    ),
    (
        "LP-2: the list already holds it, nothing is called",
        TAG_ADDED,
        LISTS_ON,
        answers(known(("UNASSIGNED", "CALL_NOW"))),
        [*HEAD, WriteAgentState(GRACE, "UNASSIGNED", 11)],
        Outcome("skipped", "already_in_place"),
    ),
    (
        "Power Dialer lists off: each step logged skipped, the new agent still remembered",
        TAG_ADDED,
        (FLAG_AGENT_LIST_SYNC,),
        answers(known(agent=None)),
        [
            *HEAD,
            l2("skipped", DISABLED, suffix="-new-agent"),
            l2("skipped", DISABLED),
            WriteAgentState(GRACE, "UNASSIGNED"),
        ],
        Outcome("skipped", DISABLED),
    ),
    (
        "a new contact: its agent's lists from its tags, then the event's own intent",
        TAG_ADDED,
        LISTS_ON,
        answers(known(agent=None)),
        [
            *HEAD,
            AddToList("UNASSIGNED", "HOT", ALO),
            MarkMembership(GRACE, "UNASSIGNED", "HOT", "active", "added"),
            l2("success", "added to DF_UNASSIGNED_HOT", suffix="-new-agent", target="list-UNASSIGNED-HOT"),
            AddToList("UNASSIGNED", "CALL_NOW", ALO),
            MarkMembership(GRACE, "UNASSIGNED", "CALL_NOW", "active", "added"),
            l2("success", "added to DF_UNASSIGNED_CALL_NOW", target="list-UNASSIGNED-CALL_NOW"),
            WriteAgentState(GRACE, "UNASSIGNED"),
        ],
        Outcome("applied"),
    ),
    (
        "L-2 step 3: a list Aloware refuses is logged and the event goes on",
        TAG_ADDED,
        LISTS_ON,
        [
            (ReadAgentView, VIEW),
            (ReadListState, known()),
            (AddToList, Permanent('Call list "DF_UNASSIGNED_CALL_NOW" not found in Aloware; create it manually')),
        ],
        [
            *HEAD,
            AddToList("UNASSIGNED", "CALL_NOW", ALO),
            l2(
                "error",
                'Failed to add to list UNASSIGNED/CALL_NOW: Call list "DF_UNASSIGNED_CALL_NOW" not found in '
                "Aloware; create it manually",
            ),
            WriteAgentState(GRACE, "UNASSIGNED", 11),
        ],
        Outcome("skipped", "no_list_change"),
    ),
    (
        "a tag removed: off all lists (Aloware's only removal), the others restored, then marked",
        TAG_REMOVED,
        LISTS_ON,
        answers(known(("UNASSIGNED", "HOT"), ("UNASSIGNED", "CALL_NOW"))),
        [
            *HEAD,
            RemoveFromAllLists(ALO),
            AddToList("UNASSIGNED", "CALL_NOW", ALO),
            MarkMembership(GRACE, "UNASSIGNED", "HOT", "removed", "removed"),
            l2("success", "removed from DF_UNASSIGNED_HOT"),
            WriteAgentState(GRACE, "UNASSIGNED", 11),
        ],
        Outcome("applied"),
    ),
    (
        "a removal from a list the registry does not know: only the membership is marked",
        TAG_REMOVED,
        LISTS_ON,
        answers(known(("UNASSIGNED", "HOT"), registered=())),
        [
            *HEAD,
            MarkMembership(GRACE, "UNASSIGNED", "HOT", "removed", "removed"),
            l2("success", "removed from DF_UNASSIGNED_HOT"),
            WriteAgentState(GRACE, "UNASSIGNED", 11),
        ],
        Outcome("applied"),
    ),
    (
        "O-5b: an opted-out number gets no addition, and its lists are emptied",
        UPDATED,
        LISTS_ON,
        answers(known(("UNASSIGNED", "HOT"), opted_out=True)),
        [
            *HEAD,
            l2("skipped", OPTED_OUT),
            RemoveFromAllLists(ALO),
            MarkMembership(GRACE, "UNASSIGNED", "HOT", "removed", "removed"),
            l2("success", "removed from DF_UNASSIGNED_HOT"),
            WriteAgentState(GRACE, "UNASSIGNED", 11),
        ],
        Outcome("applied"),
    ),
    (
        "L-3: reassigned CHRIS → RAFI, the old agent's lists emptied and the new one's filled",
        UPDATED,
        LISTS_ON,
        answers(
            known(("CHRIS", "CALL_NOW"), agent="CHRIS"), view=ContactView("uRafi", None, None, ("new lead", "HOT"))
        ),
        [
            *HEAD[:0],
            ReadAgentView(CONTACT),
            HoldContactLock(PHONE, GRACE),
            ReadListState(GRACE, PHONE),
            RemoveFromAllLists(ALO),
            MarkMembership(GRACE, "CHRIS", "CALL_NOW", "removed", "removed"),
            l2(
                "success",
                "removed from DF_CHRIS_CALL_NOW",
                suffix="-reassign-remove",
                agent="RAFI",
                reason="owner_id_match:uRafi",
            ),
            AddToList("RAFI", "HOT", ALO),
            MarkMembership(GRACE, "RAFI", "HOT", "active", "added"),
            l2(
                "success",
                "added to DF_RAFI_HOT",
                suffix="-reassign-add",
                target="list-RAFI-HOT",
                agent="RAFI",
                reason="owner_id_match:uRafi",
            ),
            WriteAgentState(GRACE, "RAFI", 11, reassign=True),
            Inform("contact_reassigned", {"ghl_contact_id": GRACE, "old": "CHRIS", "new": "RAFI"}),
        ],
        Outcome("applied"),
    ),
    (
        "L-1 on an opportunity: the stage names the list",
        STAGE,
        LISTS_ON,
        [(ReadStage, "Follow Up"), *answers(known())],
        [
            *HEAD,
            ReadStage(STAGE.payload),
            AddToList("UNASSIGNED", "FOLLOW_UP", ALO),
            MarkMembership(GRACE, "UNASSIGNED", "FOLLOW_UP", "active", "added"),
            l2("success", "added to DF_UNASSIGNED_FOLLOW_UP", target="list-UNASSIGNED-FOLLOW_UP"),
            WriteAgentState(GRACE, "UNASSIGNED", 11),
        ],
        Outcome("applied"),
    ),
    (
        "R1: our own echo with the agent unchanged changes no list",
        UPDATED,
        LISTS_ON,
        answers(known(("UNASSIGNED", "HOT"))),
        [*HEAD],
        Outcome("echo", "middleware-originated"),
    ),
]


@pytest.mark.parametrize(
    ("name", "incoming", "flags", "scripted", "expected", "result"), LIST_CASES, ids=[c[0] for c in LIST_CASES]
)
def test_plan_list_membership(
    name: str,
    incoming: Any,
    flags: tuple[str, ...],
    scripted: list[tuple[Any, Any]],
    expected: list[Any],
    result: Outcome,
) -> None:
    echo = name.startswith("R1")
    ops, outcome = run(plan_list_membership(incoming, CONTACT, POLICY, ctx(*flags), echo=echo), scripted)
    assert ops == expected
    assert outcome == result


def test_an_echo_of_a_contact_seen_first_remembers_its_agent_only() -> None:
    ops, outcome = run(
        plan_list_membership(UPDATED, CONTACT, POLICY, ctx(*LISTS_ON), echo=True), answers(known(agent=None))
    )
    assert ops == [*HEAD, WriteAgentState(GRACE, "UNASSIGNED")]
    assert outcome == Outcome("echo", "middleware-originated")


def test_the_contact_is_read_when_cg_did_not_and_a_gone_one_is_logged() -> None:
    ops, outcome = run(plan_list_membership(TAG_ADDED, None, POLICY, ctx(*LISTS_ON)), [(ReadGhlContact, None)])
    assert ops == [
        ReadGhlContact(GRACE),
        LogSync("L", "skipped", "ghl_to_aloware", "list", GRACE, message="ghl_contact_not_found"),
    ]
    assert outcome == Outcome("skipped", "ghl_contact_not_found")


def test_without_the_list_sync_nothing_is_planned() -> None:
    assert run(plan_list_membership(TAG_ADDED, CONTACT, POLICY, ctx(FLAG_POWER_DIALER_LISTS))) == (
        [],
        Outcome("skipped", "agent_list_sync_disabled"),
    )


def test_l2_step2_an_unmapped_aloware_contact_is_retried_not_skipped() -> None:
    _, error = run(plan_list_membership(TAG_ADDED, CONTACT, POLICY, ctx(*LISTS_ON)), answers(known(aloware_id=None)))
    assert isinstance(error, RetryLater)
    assert str(error) == f"Could not resolve Aloware contact ID for GHL contact {GRACE}"


def test_a_tag_events_contact_is_its_contact_id_not_its_own_id() -> None:
    assert contact_id(TAG_ADDED) == GRACE and contact_id(STAGE) == GRACE
    assert contact_id(event("ghl/ContactUpdate.json")) == "ghlContactAda0000001"


# --- R3 --------------------------------------------------------------------------------------
STOP = OptOut(PHONE, "texting", "STOP", NOW)
RECORD = RecordOptOut(PHONE, "opted_out", "texting", "STOP", NOW)
LISTED = OptOutListings(
    True,
    (KnownMapping(GRACE, ALO, PHONE), KnownMapping("ghlOther", "7000009", PHONE)),
    (Membership(GRACE, "CHRIS", "CALL_NOW"), Membership(GRACE, "CHRIS", "NEW_LEADS")),
)


def r3(source: str, target: str, trigger: str = "optout.stop") -> LogSync:
    return LogSync(
        "L-2",
        "success",
        "ghl_to_aloware",
        "list",
        source,
        target_id=target,
        message="removed from DF_CHRIS_CALL_NOW, DF_CHRIS_NEW_LEADS",
        details={"trigger": trigger, "opted_out": True},
    )


REMOVALS = [
    RemoveFromAllLists(ALO),
    MarkMembership(GRACE, "CHRIS", "CALL_NOW", "removed", "opted_out"),
    MarkMembership(GRACE, "CHRIS", "NEW_LEADS", "removed", "opted_out"),
    r3(GRACE, ALO),
]

R3_CASES: list[tuple[str, OptOut, dict[str, Any], Any, list[Any], Outcome]] = [
    (
        "recorded first, then the number's lists emptied at once",
        STOP,
        {},
        LISTED,
        [RECORD, HoldContactLock(PHONE), ReadOptOutListings(PHONE), *REMOVALS],
        Outcome("applied"),
    ),
    (
        "M-1.4: an inbound STOP text is recorded under the lock, as ghl-sync does",
        OptOut(PHONE, "texting", "STOP", NOW, under_lock=True),
        {},
        LISTED,
        [HoldContactLock(PHONE), RECORD, ReadOptOutListings(PHONE), *REMOVALS],
        Outcome("applied"),
    ),
    (
        "O-7 recorded it already",
        OptOut(PHONE, "ghl", "GHL DND", NOW, record=False),
        {"ghl_id": GRACE},
        LISTED,
        [HoldContactLock(PHONE), ReadOptOutListings(PHONE, GRACE), *REMOVALS],
        Outcome("applied"),
    ),
    (
        "O-4: the registry does not say opted out (a stale opt-out)",
        STOP,
        {},
        OptOutListings(False),
        [RECORD, HoldContactLock(PHONE), ReadOptOutListings(PHONE)],
        Outcome("ignored", "not_opted_out"),
    ),
    (
        "LP-2: never on one of our lists, nothing to call",
        STOP,
        {},
        OptOutListings(True, LISTED.mappings, ()),
        [RECORD, HoldContactLock(PHONE), ReadOptOutListings(PHONE)],
        Outcome("ignored", "not_on_any_list"),
    ),
    (
        "D-1: the DNC event's own Aloware contact is taken off too",
        OptOut(PHONE, "aloware", "DNC Updated", NOW),
        {"aloware_id": "7000001"},
        LISTED,
        [
            RecordOptOut(PHONE, "opted_out", "aloware", "DNC Updated", NOW),
            HoldContactLock(PHONE),
            ReadOptOutListings(PHONE),
            RemoveFromAllLists("7000001"),
            RemoveFromAllLists(ALO),
            *REMOVALS[1:3],
            r3(GRACE, "7000001", "contact.dnc_updated"),
            r3(GRACE, ALO, "contact.dnc_updated"),
        ],
        Outcome("applied"),
    ),
]


@pytest.mark.parametrize(
    ("name", "opt_out", "ids", "listings", "expected", "result"), R3_CASES, ids=[c[0] for c in R3_CASES]
)
def test_plan_opt_out_removal(
    name: str, opt_out: OptOut, ids: dict[str, Any], listings: Any, expected: list[Any], result: Outcome
) -> None:
    trigger = "contact.dnc_updated" if opt_out.source == "aloware" else "optout.stop"
    ops, outcome = run(plan_opt_out_removal(opt_out, trigger, ctx(*LISTS_ON), **ids), [(ReadOptOutListings, listings)])
    assert (ops, outcome) == (expected, result)


@pytest.mark.parametrize(("flags", "reason"), [((), "agent_list_sync_disabled"), ((FLAG_AGENT_LIST_SYNC,), DISABLED)])
def test_with_the_lists_off_an_opt_out_plans_nothing(flags: tuple[str, ...], reason: str) -> None:
    assert run(plan_opt_out_removal(STOP, "optout.stop", ctx(*flags))) == ([], Outcome("ignored", reason))


def test_lists_holding_an_aloware_contact_we_cannot_name_are_retried() -> None:
    unnamed = OptOutListings(True, (KnownMapping(GRACE, None, PHONE),), (Membership(GRACE, "CHRIS", "CALL_NOW"),))
    ops, error = run(plan_opt_out_removal(STOP, "optout.stop", ctx(*LISTS_ON)), [(ReadOptOutListings, unnamed)])
    assert isinstance(error, RetryLater) and not [op for op in ops if isinstance(op, RemoveFromAllLists)]
