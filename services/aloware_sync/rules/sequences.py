"""Aloware sequences from the ``aloware_list_status`` custom field (spec/outbound.md §1.11,
rule S), as a planner. Its target is Aloware, so aloware-sync runs it, on the Aloware
``contact.updated`` event (ghl-sync runs CA on the same event, independently).

Refusals (``Permanent``) are tolerated where the spec swallows them ("errors swallowed", "not
re-raised"). A rate limit or outage is not a refusal but a "not yet": it ends the attempt, the
event is retried and the enrolment happens then (ARCHITECTURE.md invariant 6). A retry plans
S-4/S-6 from the top, which is safe: the status is stored (S-7) only after the enrolment,
removing from all lists and disenrolling twice changes nothing, and the enrolment that was
refused had not happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contracts.phone import to_e164
from services.aloware_sync.rules.known import FLAG_ALOWARE_SEQUENCES, AgentState, AlowarePolicy, KnownMapping
from services.aloware_sync.rules.ops import (
    DisenrollSequences,
    EnrollSequence,
    Flow,
    Inform,
    LogSync,
    LookupAlowareContact,
    ReadAgentState,
    ReadMapping,
    RecordListStatus,
    RemoveFromAllLists,
    SyncStatus,
)
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.infra.errors import Permanent

__all__ = ["DISABLED", "ListStatus", "list_status", "plan_sequence", "sequence_for", "trigger"]

DISABLED = "Aloware sequences are temporarily disabled"


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def trigger(payload: dict[str, Any]) -> tuple[str, str] | None:
    """S-1: (status, phone) when the event carries the list status and a phone, in ``body``
    first, then the top level (BUG-62), under any of the spellings Aloware uses."""
    for source in (_object(payload.get("body")), payload):
        fields = next(
            (
                found
                for found in (_object(source.get(k)) for k in ("customFields", "custom_fields", "custom"))
                if "aloware_list_status" in found
            ),
            None,
        )
        phone = next((source[k] for k in ("phone_number", "phone", "phoneNumber") if source.get(k)), None)
        if fields is not None and phone:
            return str(fields.get("aloware_list_status") or ""), str(phone)
    return None


@dataclass(frozen=True)
class ListStatus:
    """S-1's reading of an Aloware contact event: the status (empty: cleared), the number
    (E.164 when it normalises, else as sent) and the Aloware contact id when the body has one."""

    status: str
    phone: str
    aloware_id: str | None = None


def list_status(payload: dict[str, Any], region: str) -> ListStatus | None:
    """S-1 for the planner; None when the event does not trigger S."""
    found = trigger(payload)
    if found is None:
        return None
    status, raw_phone = found
    body = _object(payload.get("body"))
    return ListStatus(status, to_e164(raw_phone, region) or raw_phone, str(body["id"]) if body.get("id") else None)


def sequence_for(mapping: Mapping[str, Any], status: str) -> tuple[str | None, bool]:
    """S-5: (sequence id, optional) for a status; (None, optional) when unmapped."""
    entry = mapping.get(status)
    if isinstance(entry, dict):
        return (str(entry["sequence_id"]) if entry.get("sequence_id") else None), bool(entry.get("optional"))
    return (str(entry) if entry else None), False


def plan_sequence(change: ListStatus | None, policy: AlowarePolicy, ctx: RuleContext) -> Flow[Outcome]:
    """S-1 … S-7. The outcome is ``applied`` only when Aloware was written (enrolled, or taken
    off the lists for a cleared status); everything else is ``ignored`` with its reason, so
    the event's outcome stays what CA (ghl-sync) made of it."""
    if change is None:
        return Outcome("ignored", "no_list_status")
    status, phone = change.status, change.phone
    source_id = change.aloware_id or phone

    mapping: KnownMapping | None = (yield ReadMapping(aloware_id=change.aloware_id)) if change.aloware_id else None
    state: AgentState | None = (yield ReadAgentState(mapping.ghl_id)) if mapping else None
    if state is not None and (state.last_list_status or "") == status:
        yield Inform("sequence_status_unchanged", {"status": status})  # S-2
        return Outcome("ignored", "sequence_status_unchanged")
    if not ctx.flag(FLAG_ALOWARE_SEQUENCES):
        yield LogSync("S-3", "skipped", "ghl_to_aloware", "sequence", source_id, message=DISABLED)
        return Outcome("ignored", "aloware_sequences_disabled")
    result: SyncStatus = "skipped"
    message: str | None = None
    target_id: str | None = None
    if not status:  # S-4: off every list, nothing else
        yield from _swallowed(RemoveFromAllLists, (yield from _aloware_id(change)))
        result, message = "success", "status cleared: removed from all lists"
    else:
        sequence_id, optional = sequence_for(policy.sequences, status)
        if sequence_id is None:
            message = f'Status "{status}" not in mapping' + (" (optional)" if optional else "")
        else:
            yield from _swallowed(RemoveFromAllLists, (yield from _aloware_id(change)))
            yield from _swallowed(DisenrollSequences, phone)
            try:
                message = yield EnrollSequence(sequence_id, phone)
                result = "success"
            except Permanent as exc:
                result, message = "error", f"Failed to enroll: {exc}"
            target_id = sequence_id
    yield LogSync("S", result, "ghl_to_aloware", "sequence", source_id, target_id=target_id, message=message)
    if state is not None:  # S-7: only when the agent row exists
        yield RecordListStatus(state.id, status)
    if result == "success":
        return Outcome("applied")
    return Outcome("ignored", message or result)


def _aloware_id(change: ListStatus) -> Flow[str | None]:
    """The Aloware contact: the body's id, else looked up by phone (a refusal: none)."""
    if change.aloware_id:
        return change.aloware_id
    try:
        record = yield LookupAlowareContact(change.phone)
    except Permanent:
        return None
    return str(record.id) if record else None


def _swallowed(operation: type[RemoveFromAllLists] | type[DisenrollSequences], argument: str | None) -> Flow[None]:
    """A step whose refusal the spec swallows (S-4, S-6); nothing without its argument."""
    if argument is None:
        return
    try:
        yield operation(argument)
    except Permanent as exc:
        yield Inform("sequence_step_failed_ignored", {"error": str(exc)})
