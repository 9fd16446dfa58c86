"""Agent-managed call lists (spec/outbound.md §1.10, rules L-0…L-4) and the list half of an
opt-out (R3, O-5), as planners.

Memberships (``contact_list_memberships``) are the record of what we put on which list, so an
add that is already active and a removal of something not on a list plan nothing (LP-2):
redeliveries and replays change no list twice. Aloware can only remove a contact from *all*
power-dialer lists at once, so a removal is followed by re-adding every list the contact
still actively belongs to.

A refusal of one list (no such list in Aloware, the endpoint refused: ``Permanent`` thrown
in at the ``AddToList``) is logged and the next list is tried (L-2 step 3). A rate limit or
outage is not thrown in: it ends the attempt, the event is retried and the change happens
then (ARCHITECTURE.md invariant 6). The plan is ordered so that a retry finds what the failed
attempt left and finishes it, once: a membership is marked only after Aloware took the add
(an add already made is not made again), a removal only after the other lists were
restored, and the agent state (L-3) only after its steps, so a retry takes the same branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts.envelope import WebhookEvent
from services.aloware_sync.rules.known import (
    FLAG_AGENT_LIST_SYNC,
    FLAG_POWER_DIALER_LISTS,
    AlowarePolicy,
    ListState,
    OptOutListings,
)
from services.aloware_sync.rules.ops import (
    AddToList,
    Flow,
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
    WriteAgentState,
)
from services.aloware_sync.rules.optouts import OptOut
from services.clients.ghl import GhlContact
from services.domain.call_lists import (
    STAGE_TYPES,
    has_legacy_marker,
    list_intent,
    list_name,
    resolve_agent,
)
from services.domain.contact import ghl_to_canonical
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.infra.errors import Permanent, RetryLater

__all__ = [
    "DISABLED",
    "OPTED_OUT",
    "contact_id",
    "plan_list_membership",
    "plan_opt_out_removal",
]

DISABLED = "Power Dialer lists are temporarily disabled"
OPTED_OUT = "Contact is opted out, cannot add to lists"
TAG_EVENTS = ("tag.added", "tag.removed")  # L-1 → L-2 only: no reassignment step (parity, §1.1)


def contact_id(event: WebhookEvent) -> str:
    """The GHL contact a contact, tag or opportunity event is about."""
    payload = event.payload
    contact = payload.get("contact")
    for value in (payload.get("contactId"), contact.get("id") if isinstance(contact, dict) else None):
        if isinstance(value, str) and value:
            return value
    return event.entity_id


@dataclass
class _Lists:
    """The flow's own view of the contact's lists while it plans (what it marked so far)."""

    active: set[tuple[str, str]]
    registered: set[tuple[str, str]]
    aloware_id: str | None


@dataclass(frozen=True)
class _Step:
    agent: str
    add: list[str]
    remove: list[str]
    suffix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def plan_list_membership(
    event: WebhookEvent, contact: GhlContact | None, policy: AlowarePolicy, ctx: RuleContext, *, echo: bool = False
) -> Flow[Outcome]:
    """L-3 → L-1 → L-2 for GHL contact, tag and pipeline events. ``contact``: the GHL contact
    as CG just saw it (None: read it).

    ``echo``: the event is our own write coming back (LP-1), which changes no list (R1). The
    echo ledger covers the fields we write (names, e-mail, phone, address, tags), not the owner
    or the agent field, which we never write: a human who reassigned the contact in GHL within
    the echo window sends an event that hashes like our write. So an echo still runs L-3's
    reassignment when the agent resolved now differs from the recorded one. Every other list
    effect of an echo (the event's own intent, the first placement of a contact we created) is
    dropped and the outcome stays ``echo``; a contact seen for the first time still gets its
    ``contact_agent_state`` row, so the sequences (S-7) and a later reassignment find its agent."""
    if not ctx.flag(FLAG_AGENT_LIST_SYNC):
        return Outcome("skipped", "agent_list_sync_disabled")
    ghl_id = contact_id(event)
    if contact is None:
        contact = yield ReadGhlContact(ghl_id)
    if contact is None:
        yield LogSync("L", "skipped", "ghl_to_aloware", "list", ghl_id, message="ghl_contact_not_found")
        return Outcome("skipped", "ghl_contact_not_found")
    phone = ghl_to_canonical(contact, ctx.region).phone
    view = yield ReadAgentView(contact)
    yield HoldContactLock(phone, ghl_id)
    state: ListState = yield ReadListState(ghl_id, phone)
    agent, reason = resolve_agent(state.agents, view, policy.default_agent)
    details = {"agent": agent, "agent_reason": reason, "legacy_marker": has_legacy_marker(contact.tags)}
    current = state.agent_state
    if echo and (current is None or current.agent_key == agent):
        if current is None:  # the agent is remembered (S-7 and a later reassignment read it), no list changes
            yield WriteAgentState(ghl_id, agent)
        return Outcome("echo", "middleware-originated")

    def intent(kind: str, payload: dict[str, Any], stage: str | None = None) -> tuple[list[str], list[str]]:
        return list_intent(
            kind,
            payload,
            contact.tags,
            opted_out=state.opted_out,
            list_keys=list(policy.list_keys),
            mode=policy.tag_match_mode,
            stage=stage,
        )

    lists = _Lists(set(state.active), set(state.registered), state.aloware_id)
    steps: list[_Step] = []
    # written after the steps: a retry must see the old state and redo the reassignment or
    # new-agent step, whose finished parts are then no-ops
    written: WriteAgentState
    reassigned_from = None
    if current is not None and current.agent_key != agent and event.canonical_type not in TAG_EVENTS:
        reassigned_from = current.agent_key
        old_keys = sorted(k for a, k in lists.active if a == current.agent_key)
        add, _ = intent("contact.changed", {})
        steps += [
            _Step(current.agent_key, [], old_keys, "-reassign-remove", details),
            _Step(agent, add, [], "-reassign-add", details),
        ]
        written = WriteAgentState(ghl_id, agent, current.id, reassign=True)
    else:
        if current is None:
            add, _ = intent("contact.changed", {})
            steps.append(_Step(agent, add, [], "-new-agent", details))
            written = WriteAgentState(ghl_id, agent)
        else:
            written = WriteAgentState(ghl_id, agent, current.id)
        stage = (yield ReadStage(event.payload)) if event.canonical_type in STAGE_TYPES else None
        add, remove = intent(event.canonical_type, event.payload, stage)
        steps.append(_Step(agent, add, remove, "", details))
    results = []
    for step in steps:
        results.append((yield from _apply(ghl_id, step, lists, state.opted_out, ctx)))
    yield written
    if reassigned_from:
        yield Inform("contact_reassigned", {"ghl_contact_id": ghl_id, "old": reassigned_from, "new": agent})
    if any(r == "applied" for r in results):
        return Outcome("applied")
    return Outcome("skipped", results[-1] if results else "no_list_change")


def _apply(ghl_id: str, step: _Step, lists: _Lists, opted_out: bool, ctx: RuleContext) -> Flow[str]:
    """L-2, one membership change: "applied" when a list changed, else why nothing did."""
    agent = step.agent

    def log(status: Any, message: str, target_id: str | None = None) -> LogSync:
        return LogSync(
            "L-2",
            status,
            "ghl_to_aloware",
            "list",
            ghl_id,
            target_id=target_id,
            message=message,
            details=step.details,
            correlation_suffix=step.suffix,
        )

    add, remove = list(step.add), list(step.remove)
    if not add and not remove:
        return "no_list_change"
    if not ctx.flag(FLAG_POWER_DIALER_LISTS):
        yield log("skipped", DISABLED)
        return DISABLED
    if opted_out:  # O-5b: never an addition; removals still go through
        yield log("skipped", OPTED_OUT)
        add = []
    add = [k for k in add if (agent, k) not in lists.active]
    remove = [k for k in remove if (agent, k) in lists.active]
    if not add and not remove:
        return "already_in_place"
    if not lists.aloware_id:
        raise RetryLater(None, f"Could not resolve Aloware contact ID for GHL contact {ghl_id}")
    aloware_id = lists.aloware_id
    changed = False
    for key in add:
        try:
            list_id = yield AddToList(agent, key, aloware_id)
        except Permanent as exc:
            yield log("error", f"Failed to add to list {agent}/{key}: {exc}")
            continue
        lists.registered.add((agent, key))
        yield MarkMembership(ghl_id, agent, key, "active", "added")
        lists.active.add((agent, key))
        yield log("success", f"added to {list_name(agent, key)}", target_id=list_id)
        changed = True
    if remove:
        if any((agent, k) in lists.registered for k in remove):
            # the removal is marked only once the other lists are back: a retry finds the keys
            # still active and removes and restores again (A4 empties every list first, so no
            # list gets the contact twice)
            keep = sorted((a, k) for a, k in lists.active if not (a == agent and k in remove))
            yield RemoveFromAllLists(aloware_id)
            for other_agent, other_key in keep:  # A4 removed them all
                try:
                    yield AddToList(other_agent, other_key, aloware_id)
                except Permanent as exc:
                    yield log("error", f"Failed to re-add {other_agent}/{other_key}: {exc}")
        for key in remove:
            yield MarkMembership(ghl_id, agent, key, "removed", "removed")
            lists.active.discard((agent, key))
        yield log("success", f"removed from {', '.join(list_name(agent, k) for k in remove)}")
        changed = True
    return "applied" if changed else "no_list_change"


def plan_opt_out_removal(
    opt_out: OptOut, trigger: str, ctx: RuleContext, *, ghl_id: str | None = None, aloware_id: str | None = None
) -> Flow[Outcome]:
    """An opted-out number off every call list when the opt-out arrives (STOP, Aloware DNC,
    GHL DND), not at the contact's next GHL event, which may never come (R3, O-5; L-2 step 4
    with every key of every agent, so nothing is re-added). ``trigger``: the event's
    canonical type.

    ``opt_out`` is recorded in the registry first, with the arguments ghl-sync's rule for the
    same event uses (O-1 is idempotent per event), so whichever consumer gets there first, the
    registry says opted out before the lists are touched and a concurrent contact event adds
    nothing back (O-5b); with ``record=False`` the caller has recorded it. The removal acts on
    the registry's verdict (O-4: a stale opt-out changes nothing) and on our memberships
    (LP-2: a replay, or a number never on one of our lists, calls nothing): every live GHL
    contact with the number, plus ``ghl_id``, that has an active membership has its Aloware
    contact (and ``aloware_id``, the DNC event's own) taken off all power-dialer lists at
    once, the only removal Aloware has, which for an opt-out is what we want. Memberships are
    marked ``removed`` (reason ``opted_out``) only after Aloware took the removal, so a retry
    finds them active and removes again."""
    if not ctx.flag(FLAG_AGENT_LIST_SYNC):
        return Outcome("ignored", "agent_list_sync_disabled")
    if not ctx.flag(FLAG_POWER_DIALER_LISTS):
        return Outcome("ignored", DISABLED)
    phone = opt_out.phone
    record = RecordOptOut(phone, "opted_out", opt_out.source, opt_out.reason, opt_out.at)
    if opt_out.record and not opt_out.under_lock:
        yield record
    yield HoldContactLock(phone)
    if opt_out.record and opt_out.under_lock:
        yield record
    listings: OptOutListings = yield ReadOptOutListings(phone, ghl_id)
    if not listings.opted_out:
        return Outcome("ignored", "not_opted_out")
    if not listings.active:  # LP-2: nothing of ours to take off (a replay, or never on a list)
        return Outcome("ignored", "not_on_any_list")
    listed = sorted({m.contact_id for m in listings.active})
    aloware_ids = sorted(
        {m.aloware_id for m in listings.mappings if m.aloware_id and m.ghl_id in listed}
        | ({aloware_id} if aloware_id else set())
    )
    if not aloware_ids:  # L-2 step 2: the lists hold an Aloware contact we cannot name yet
        raise RetryLater(None, f"Could not resolve Aloware contact ID for GHL contact {listed[0]}")
    for alo in aloware_ids:
        yield RemoveFromAllLists(alo)
    for m in listings.active:
        yield MarkMembership(m.contact_id, m.agent, m.list_key, "removed", "opted_out")
    names = ", ".join(list_name(m.agent, m.list_key) for m in listings.active)
    for alo in aloware_ids:
        yield LogSync(
            "L-2",
            "success",
            "ghl_to_aloware",
            "list",
            listed[0],
            target_id=alo,
            message=f"removed from {names}",
            details={"trigger": trigger, "opted_out": True},
        )
    return Outcome("applied")
