"""Aloware sequences from the ``aloware_list_status`` custom field (spec/outbound.md §1.11,
rule S). Runs before the contact sync of an Aloware contact-updated event.

Permanent failures are logged and never fail the event (parity: "errors swallowed", "not
re-raised"). A rate limit or outage (``RetryLater``) is not a failure of the step but a
"not yet": it propagates, the event is retried and the enrolment happens then
(ARCHITECTURE.md invariant 6). A retry runs S-4/S-6 from the top, which is safe: the status
is stored (S-7) only after the enrolment, removing from all lists and disenrolling twice
changes nothing, and the enrolment that was refused had not happened."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from contracts.envelope import WebhookEvent
from contracts.phone import to_e164
from services.domain import store
from services.infra.db.models import ContactAgentStateRow
from services.infra.errors import Permanent
from services.infra.logging import get_logger

if TYPE_CHECKING:
    from services.ghl_sync.service import GhlSync

log = get_logger(__name__)
DISABLED = "Aloware sequences are temporarily disabled"


def trigger(payload: dict[str, Any]) -> tuple[str, str] | None:
    """S-1: (status, phone) when the event carries the list status and a phone."""
    for source in (payload.get("body") if isinstance(payload.get("body"), dict) else {}, payload):
        fields = next((source[k] for k in ("customFields", "custom_fields", "custom")
                       if isinstance(source.get(k), dict) and "aloware_list_status" in source[k]), None)
        phone = next((source[k] for k in ("phone_number", "phone", "phoneNumber") if source.get(k)), None)
        if fields is not None and phone:
            return str(fields.get("aloware_list_status") or ""), str(phone)
    return None


def sequence_for(mapping: dict[str, Any], status: str) -> tuple[str | None, bool]:
    """S-5: (sequence id, optional) for a status; (None, optional) when unmapped."""
    entry = mapping.get(status)
    if isinstance(entry, dict):
        return (str(entry["sequence_id"]) if entry.get("sequence_id") else None), bool(entry.get("optional"))
    return (str(entry) if entry else None), False


async def run(sync: GhlSync, event: WebhookEvent, attempt: int) -> None:
    found = trigger(event.payload)
    if found is None:
        return
    status, raw_phone = found
    phone = to_e164(raw_phone, sync.settings.default_phone_region) or raw_phone
    body = event.payload.get("body") if isinstance(event.payload.get("body"), dict) else {}
    common = {"direction": "ghl_to_aloware", "entity_type": "sequence", "source_id": str(body.get("id") or phone),
              "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
    async with sync.engine.begin() as conn:
        mapping = await store.mapping_by_aloware(conn, str(body["id"])) if body.get("id") else None
        state = (await conn.execute(select(ContactAgentStateRow).where(
            ContactAgentStateRow.contact_id == mapping.ghl_contact_id))).first() if mapping else None
        if state is not None and (state.last_aloware_list_status or "") == status:
            log.info("sequence_status_unchanged", status=status)  # S-2
            return
        if not sync.settings.enable_aloware_sequences:
            await store.log_sync(conn, status="skipped", rule="S-3", message=DISABLED, **common)
            return
    aloware = sync.aloware
    if aloware is None:
        log.warning("sequence_without_aloware_client")
        return
    message, result = None, "skipped"
    if not status:  # S-4: off every list, nothing else
        await _swallow(aloware.remove_from_all_lists, await _aloware_id(aloware, phone, body))
        result, message = "success", "status cleared: removed from all lists"
    else:
        sequence_id, optional = sequence_for(sync.settings.aloware_status_to_sequence, status)
        if sequence_id is None:
            message = f'Status "{status}" not in mapping' + (" (optional)" if optional else "")
        else:
            await _swallow(aloware.remove_from_all_lists, await _aloware_id(aloware, phone, body))
            await _swallow(aloware.disenroll_sequences, phone)
            try:
                message = await aloware.enroll_sequence(sequence_id, phone)
                result = "success"
            except Permanent as exc:
                result, message = "error", f"Failed to enroll: {exc}"
            common["target_id"] = sequence_id
    async with sync.engine.begin() as conn:
        await store.log_sync(conn, status=result, rule="S", message=message, **common)
        if state is not None:  # S-7: only when the agent row exists
            await conn.execute(update(ContactAgentStateRow).where(ContactAgentStateRow.id == state.id)
                               .values(last_aloware_list_status=status, updated_at=datetime.now(UTC)))


async def _aloware_id(aloware: Any, phone: str, body: dict[str, Any]) -> str | None:
    if body.get("id"):
        return str(body["id"])
    try:
        record = await aloware.lookup_by_phone(phone)
    except Permanent:
        return None
    return record.id if record else None


async def _swallow(call: Any, argument: Any) -> None:
    """A step whose permanent failure the spec swallows; RetryLater delays the event."""
    if argument is None:
        return
    try:
        await call(argument)
    except Permanent as exc:
        log.info("sequence_step_failed_ignored", error=str(exc))
