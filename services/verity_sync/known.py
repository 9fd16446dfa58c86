"""What PostgreSQL knows before a verity-sync planner decides (its ``known`` argument): read
by the service before each plan and by the dry run (``explain.py``), never written here."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.envelope import WebhookEvent
from contracts.payloads.provider import ProviderOutboundMessage
from contracts.phone import to_e164
from services.domain import effects, optout, store
from services.infra.db.models import SyncLogRow
from services.verity_sync.rules.appointment import AppointmentRef, KnownAppointment
from services.verity_sync.rules.forward import RULE as FORWARD_RULE
from services.verity_sync.rules.forward import KnownForward
from services.verity_sync.rules.ops import Reach
from services.verity_sync.rules.provider_message import KnownSend, send_key


async def known_forward(conn: AsyncConnection, event: WebhookEvent) -> KnownForward:
    """F-1: forwarded before when a success row carries this event's id."""
    found = await conn.scalar(
        select(SyncLogRow.id)
        .where(
            SyncLogRow.rule == FORWARD_RULE,
            SyncLogRow.status == "success",
            SyncLogRow.correlation_id == str(event.event_id),
        )
        .limit(1)
    )
    return KnownForward(forwarded=found is not None)


async def known_send(conn: AsyncConnection, sms: ProviderOutboundMessage, region: str) -> KnownSend:
    """M-2: how the send's claim ended, and the recipient's opt-out (O-5a)."""
    settled = await effects.settled(conn, send_key(sms))
    opted_out = await optout.is_opted_out(conn, to_e164(sms.phone, region))
    if settled is None:
        return KnownSend(opted_out=opted_out)
    return KnownSend(settled=settled.state, detail=settled.detail, opted_out=opted_out)


async def mapped_reach(conn: AsyncConnection, ghl_contact_id: str) -> Reach | None:
    """Our mapping's phone and e-mail of a GHL contact."""
    mapping = await store.mapping_by_ghl(conn, ghl_contact_id)
    return None if mapping is None else Reach(mapping.phone_number, mapping.email)


async def known_appointment(conn: AsyncConnection, ref: AppointmentRef) -> KnownAppointment:
    """AP: our mapping of the contact the webhook names."""
    if ref.ghl_contact_id is None:
        return KnownAppointment()
    return KnownAppointment(await mapped_reach(conn, ref.ghl_contact_id))
