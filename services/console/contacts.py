"""One person across the systems, for the question operators ask: why is this contact not in
sync? Found by phone (normalised with ``contracts.phone``), e-mail, GHL id or Aloware id: the
mapping, the GHL snapshot kept with it against Aloware's fields (a live lookup when Aloware is
configured), whether the GHL → Aloware rule would write anything (``domain.merge``), opt-out
status and history, call-list memberships per agent, and the recent events and ``sync_log``
rows about the person."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.phone import to_e164
from services.clients.aloware import AlowareClient
from services.domain.contact import FIELDS, CanonicalContact, aloware_to_canonical
from services.domain.merge import out_of_sync
from services.infra.db.models import (
    CallListRegistryRow,
    ContactAgentStateRow,
    ContactListMembershipRow,
    ContactMappingRow,
    OptoutEventRow,
    OptoutRegistryRow,
    SyncLogRow,
    TextingWebhookEventRow,
    WebhookEventRow,
)
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings

__all__ = ["KINDS", "ContactView", "find_contact"]

log = get_logger(__name__)
Kind = Literal["phone", "email", "ghl", "aloware"]
KINDS: dict[str, str] = {"phone": "phone", "email": "e-mail", "ghl": "GHL id", "aloware": "Aloware id"}
RECENT = 20


@dataclass
class ContactView:
    """What the contact page shows; ``mapping`` is None when no mapping matched."""

    kind: str
    query: str
    phone: str | None = None
    mapping: dict[str, Any] | None = None
    fields: list[dict[str, Any]] = field(default_factory=list)
    aloware_source: str = ""
    verdict: str | None = None
    optout: dict[str, Any] | None = None
    optout_history: list[dict[str, Any]] = field(default_factory=list)
    agent: dict[str, Any] | None = None
    memberships: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    sync_log: list[dict[str, Any]] = field(default_factory=list)
    reconcile_events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _mapping_condition(kind: str, value: str, phone: str | None) -> Any:
    if kind == "phone":
        return ContactMappingRow.phone_number == phone
    if kind == "email":
        return ContactMappingRow.email == value
    if kind == "ghl":
        return ContactMappingRow.ghl_contact_id == value
    return ContactMappingRow.aloware_contact_id == value


async def find_contact(
    engine: AsyncEngine, settings: Settings, kind: str, query: str, aloware: AlowareClient | None = None
) -> ContactView:
    """The contact page for ``query`` read as ``kind`` (phone, email, ghl, aloware)."""
    value = query.strip()
    view = ContactView(kind=kind, query=value)
    if kind not in KINDS or not value or "\x00" in value or len(value) > 320:
        view.error = "give a phone number, an e-mail, a GHL id or an Aloware id"
        return view
    phone = to_e164(value, settings.default_phone_region) if kind == "phone" else None
    if kind == "phone" and phone is None:
        view.error = f"{value!r} is not a phone number (expected E.164 or a national number)"
        return view
    async with engine.connect() as conn:
        mapping = (
            await conn.execute(
                select(ContactMappingRow)
                .where(_mapping_condition(kind, value, phone))
                .order_by(ContactMappingRow.updated_at.desc())
                .limit(1)
            )
        ).first()
        if mapping is not None:
            view.mapping = {
                c: getattr(mapping, c)
                for c in (
                    "ghl_contact_id",
                    "aloware_contact_id",
                    "phone_number",
                    "email",
                    "sync_direction",
                    "last_synced_at",
                    "updated_at",
                    "ghl_event_at",
                    "aloware_event_at",
                    "ghl_deleted_at",
                    "ghl_conversation_id",
                )
            }
            phone = phone or mapping.phone_number
        view.phone = phone
        ids = [
            i
            for i in (
                value if kind in ("ghl", "aloware") else None,
                mapping.ghl_contact_id if mapping else None,
                mapping.aloware_contact_id if mapping else None,
            )
            if i
        ]
        ids = list(dict.fromkeys(ids))
        if phone:
            reg = (await conn.execute(select(OptoutRegistryRow).where(OptoutRegistryRow.phone_number == phone))).first()
            if reg is not None:
                view.optout = {
                    "status": reg.status,
                    "source": reg.source,
                    "reason": reg.reason,
                    "last_event_at": reg.last_event_at,
                    "last_event_id": reg.last_event_id,
                }
            view.optout_history = [
                {"at": r.at, "status": r.status, "source": r.source, "reason": r.reason, "event_id": r.event_id}
                for r in (
                    await conn.execute(
                        select(OptoutEventRow)
                        .where(OptoutEventRow.phone_number == phone)
                        .order_by(OptoutEventRow.at.desc())
                        .limit(RECENT)
                    )
                ).all()
            ]
        ghl_id = mapping.ghl_contact_id if mapping else (value if kind == "ghl" else None)
        if ghl_id:
            agent = (
                await conn.execute(select(ContactAgentStateRow).where(ContactAgentStateRow.contact_id == ghl_id))
            ).first()
            if agent is not None:
                view.agent = {
                    "agent_key": agent.agent_key,
                    "list_status": agent.last_aloware_list_status,
                    "updated_at": agent.updated_at,
                }
            rows = (
                await conn.execute(
                    select(
                        ContactListMembershipRow,
                        CallListRegistryRow.aloware_list_name,
                        CallListRegistryRow.aloware_list_id,
                    )
                    .outerjoin(
                        CallListRegistryRow,
                        and_(
                            CallListRegistryRow.agent_key == ContactListMembershipRow.agent_key,
                            CallListRegistryRow.list_key == ContactListMembershipRow.list_key,
                        ),
                    )
                    .where(ContactListMembershipRow.contact_id == ghl_id)
                    .order_by(ContactListMembershipRow.agent_key, ContactListMembershipRow.list_key)
                )
            ).all()
            view.memberships = [
                {
                    "agent_key": r.agent_key,
                    "list_key": r.list_key,
                    "status": r.status,
                    "reason": r.reason,
                    "updated_at": r.updated_at,
                    "list_name": r.aloware_list_name,
                    "list_id": r.aloware_list_id,
                }
                for r in rows
            ]
        event_rows: list[Any] = []
        if ids:
            event_rows = list(
                (
                    await conn.execute(
                        select(
                            WebhookEventRow.id,
                            WebhookEventRow.received_at,
                            WebhookEventRow.source,
                            WebhookEventRow.event_type,
                            WebhookEventRow.entity_type,
                            WebhookEventRow.entity_id,
                            WebhookEventRow.status,
                            WebhookEventRow.error_message,
                        )
                        .where(WebhookEventRow.entity_type == "contact", WebhookEventRow.entity_id.in_(ids))
                        .order_by(WebhookEventRow.received_at.desc())
                        .limit(RECENT)
                    )
                ).all()
            )
        view.events = [{"table": "webhook", **r._asdict()} for r in event_rows]
        if phone:
            texts = (
                await conn.execute(
                    select(
                        TextingWebhookEventRow.id,
                        TextingWebhookEventRow.received_at,
                        TextingWebhookEventRow.event_type,
                        TextingWebhookEventRow.entity_type,
                        TextingWebhookEventRow.entity_id,
                        TextingWebhookEventRow.status,
                        TextingWebhookEventRow.error_message,
                    )
                    .where(or_(TextingWebhookEventRow.from_number == phone, TextingWebhookEventRow.to_number == phone))
                    .order_by(TextingWebhookEventRow.received_at.desc())
                    .limit(RECENT)
                )
            ).all()
            view.events += [{"table": "texting", "source": "texting", **r._asdict()} for r in texts]
            view.events.sort(key=lambda e: e["received_at"], reverse=True)
        event_ids = [str(e["id"]) for e in view.events]
        if ids or event_ids:
            view.sync_log = [
                {
                    "at": s.started_at,
                    "rule": s.rule,
                    "direction": s.direction,
                    "entity": f"{s.entity_type}:{s.entity_id}",
                    "source_id": s.source_id,
                    "target_id": s.target_id,
                    "status": s.status,
                    "message": s.error_message,
                    "event_id": s.correlation_id,
                }
                for s in (
                    await conn.execute(
                        select(SyncLogRow)
                        .where(
                            or_(
                                and_(SyncLogRow.entity_type == "contact", SyncLogRow.entity_id.in_(ids or [""])),
                                SyncLogRow.correlation_id.in_(event_ids or [""]),
                            )
                        )
                        .order_by(SyncLogRow.started_at.desc())
                        .limit(RECENT)
                    )
                ).all()
            ]
    # "reconcile now": the newest contact event of each side, replayed through the jobs service
    newest: dict[str, dict[str, Any]] = {}
    for e in view.events:
        if e["table"] == "webhook" and e["status"] not in ("processing",):
            newest.setdefault(e["source"], e)
    view.reconcile_events = list(newest.values())
    if mapping is not None:
        await _compare(view, mapping, settings, aloware)
    return view


async def _compare(view: ContactView, mapping: Any, settings: Settings, aloware: AlowareClient | None) -> None:
    """GHL's side (the snapshot kept with the mapping) against Aloware's (a live lookup)."""
    ghl = CanonicalContact.from_snapshot(mapping.ghl_snapshot) if mapping.ghl_snapshot else None
    alo: CanonicalContact | None = None
    if aloware is None:
        view.aloware_source = "not configured: Aloware's side is unknown"
    elif not mapping.phone_number:
        view.aloware_source = "no phone number on the mapping: Aloware is looked up by phone"
    else:
        try:
            record = await aloware.lookup_by_phone(mapping.phone_number)
        except (RetryLater, Permanent) as exc:
            view.aloware_source = f"lookup failed: {exc}"
            log.warning("console_aloware_lookup_failed", error=type(exc).__name__)
        else:
            if record is None:
                view.aloware_source = "live lookup: Aloware has no contact with this number"
            else:
                alo = aloware_to_canonical(record, settings.default_phone_region)
                view.aloware_source = f"live lookup (Aloware contact {record.id})"
    for name in (*FIELDS, "tags"):
        left = getattr(ghl, name) if ghl else None
        right = getattr(alo, name) if alo else None
        if name == "tags":
            left = ", ".join(sorted(left)) if left else None
            right = ", ".join(sorted(right)) if right else None
        same = (str(left or "").lower() == str(right or "").lower()) if name == "email" else left == right
        view.fields.append({"name": name, "ghl": left, "aloware": right, "same": same})
    if ghl is None:
        view.verdict = "no GHL snapshot is kept with this mapping yet"
    elif alo is None and aloware is not None and view.aloware_source.startswith("live lookup: Aloware has no"):
        view.verdict = "out of sync: the contact is missing in Aloware"
    elif alo is not None:
        mode = settings.contact_source_of_truth
        view.verdict = (
            f"out of sync: the GHL → Aloware rule would write (source of truth {mode})"
            if out_of_sync(ghl, alo, mode)
            else f"in sync (source of truth {mode})"
        )


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
