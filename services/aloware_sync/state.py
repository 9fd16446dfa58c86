"""What PostgreSQL knows for aloware-sync's read operations (``rules/ops.py``), as the frozen
values of ``rules/known.py``. Shared by the executor (under the contact lock) and the dry run
(``explain.py``), so both see the same state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.aloware_sync.rules.known import AgentState, KnownMapping, ListState, Membership, OptOutListings
from services.domain import optout, store
from services.domain.call_lists import Agent
from services.infra.db.models import (
    AgentDirectoryRow,
    CallListRegistryRow,
    ContactAgentStateRow,
    ContactListMembershipRow,
    ContactMappingRow,
)

__all__ = ["agent_state", "list_state", "mapping", "opt_out_listings"]


def _known(row: Any) -> KnownMapping | None:
    if row is None:
        return None
    aloware = row.aloware_contact_id
    return KnownMapping(str(row.ghl_contact_id), str(aloware) if aloware else None, row.phone_number)


async def mapping(
    conn: AsyncConnection, *, ghl_id: str | None = None, aloware_id: str | None = None, phone: str | None = None
) -> KnownMapping | None:
    """The mapping by GHL id, else Aloware id, else E.164 number (the live, latest one)."""
    if ghl_id:
        return _known(await store.mapping_by_ghl(conn, ghl_id))
    if aloware_id:
        return _known(await store.mapping_by_aloware(conn, aloware_id))
    if phone:
        return _known(await store.mapping_by_phone(conn, phone))
    return None


async def agent_state(conn: AsyncConnection, ghl_id: str) -> AgentState | None:
    row = (await conn.execute(select(ContactAgentStateRow).where(ContactAgentStateRow.contact_id == ghl_id))).first()
    return AgentState(row.id, row.agent_key, row.last_aloware_list_status) if row is not None else None


async def list_state(conn: AsyncConnection, ghl_id: str, phone: str | None) -> ListState:
    """L-0…L-3's view of one GHL contact."""
    agents = (
        await conn.execute(
            select(AgentDirectoryRow).where(AgentDirectoryRow.is_active.is_(True)).order_by(AgentDirectoryRow.agent_key)
        )
    ).all()
    active = (
        await conn.execute(
            select(ContactListMembershipRow.agent_key, ContactListMembershipRow.list_key).where(
                ContactListMembershipRow.contact_id == ghl_id, ContactListMembershipRow.status == "active"
            )
        )
    ).all()
    registered = (
        await conn.execute(
            select(CallListRegistryRow.agent_key, CallListRegistryRow.list_key).where(
                CallListRegistryRow.aloware_list_id.is_not(None), CallListRegistryRow.aloware_list_id != ""
            )
        )
    ).all()
    known = await mapping(conn, ghl_id=ghl_id)
    return ListState(
        agents=tuple(
            Agent(r.agent_key, r.ghl_owner_id, r.ghl_owner_email, r.ghl_assigned_agent_field_value, r.required_tag)
            for r in agents
        ),
        agent_state=await agent_state(conn, ghl_id),
        opted_out=await optout.is_opted_out(conn, phone),
        active=frozenset((r.agent_key, r.list_key) for r in active),
        registered=frozenset((r.agent_key, r.list_key) for r in registered),
        aloware_id=known.aloware_id if known else None,
    )


async def opt_out_listings(
    conn: AsyncConnection, phone: str, ghl_id: str | None, *, assume_opted_out: bool = False
) -> OptOutListings:
    """R3's view of a number: the registry's verdict, the live mappings with it (or the
    event's GHL id) and their active memberships, oldest first. ``assume_opted_out``: the dry
    run's, for an opt-out it planned to record but did not write."""
    if not assume_opted_out and not await optout.is_opted_out(conn, phone):
        return OptOutListings(opted_out=False)
    rows = (
        await conn.execute(
            select(
                ContactMappingRow.ghl_contact_id, ContactMappingRow.aloware_contact_id, ContactMappingRow.phone_number
            ).where(
                ContactMappingRow.ghl_deleted_at.is_(None),
                or_(ContactMappingRow.phone_number == phone, ContactMappingRow.ghl_contact_id == (ghl_id or "")),
            )
        )
    ).all()
    mappings = tuple(m for m in (_known(r) for r in rows) if m is not None)
    ghl_ids = {m.ghl_id for m in mappings} | ({ghl_id} if ghl_id else set())
    active = (
        await conn.execute(
            select(ContactListMembershipRow)
            .where(
                ContactListMembershipRow.contact_id.in_(sorted(ghl_ids)), ContactListMembershipRow.status == "active"
            )
            .order_by(ContactListMembershipRow.created_at, ContactListMembershipRow.id)
        )
    ).all()
    return OptOutListings(True, mappings, tuple(Membership(r.contact_id, r.agent_key, r.list_key) for r in active))
