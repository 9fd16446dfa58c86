"""What PostgreSQL knows for aloware-sync's read operations (``rules/ops.py``), as the frozen
values of ``rules/known.py``. Shared by the executor (under the contact lock) and the dry run
(``explain.py``), so both see the same state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.aloware_sync.rules.known import AgentState, KnownMapping, ListState, Membership, OptOutListings
from services.domain import optout, store
from services.domain.call_lists import Agent
from services.infra.db.models import (
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


# L-0…L-3's six reads in one statement, built once: the active agents, the contact's active
# memberships, the lists the registry has an Aloware id for, the mapping's Aloware id, the
# registry's verdict on the number and the contact's agent row. They were six round trips
# (and six statements built per call) on every Aloware contact event; one also reads them
# from one snapshot. ``contact_mappings.ghl_contact_id`` and ``contact_agent_state.contact_id``
# are unique, so the join gives one row.
_LIST_STATE = text(
    """
    SELECT
      (SELECT coalesce(json_agg(json_build_array(a.agent_key, a.ghl_owner_id, a.ghl_owner_email,
                                                 a.ghl_assigned_agent_field_value, a.required_tag)
                                ORDER BY a.agent_key), '[]'::json)
         FROM agent_directory a WHERE a.is_active IS TRUE) AS agents,
      (SELECT coalesce(json_agg(json_build_array(m.agent_key, m.list_key)), '[]'::json)
         FROM contact_list_memberships m
        WHERE m.contact_id = CAST(:ghl_id AS text) AND m.status = 'active') AS active,
      (SELECT coalesce(json_agg(json_build_array(r.agent_key, r.list_key)), '[]'::json)
         FROM call_list_registry r
        WHERE r.aloware_list_id IS NOT NULL AND r.aloware_list_id <> '') AS registered,
      (SELECT c.aloware_contact_id FROM contact_mappings c
        WHERE c.ghl_contact_id = CAST(:ghl_id AS text)) AS aloware_id,
      (SELECT o.status FROM optout_registry o WHERE o.phone_number = CAST(:phone AS text)) AS optout_status,
      s.id AS state_id, s.agent_key AS state_agent_key, s.last_aloware_list_status AS state_list_status
    FROM (SELECT 1) AS one
    LEFT JOIN contact_agent_state s ON s.contact_id = CAST(:ghl_id AS text)
    """
)


async def list_state(conn: AsyncConnection, ghl_id: str, phone: str | None) -> ListState:
    """L-0…L-3's view of one GHL contact (``_LIST_STATE``)."""
    row = (await conn.execute(_LIST_STATE, {"ghl_id": ghl_id, "phone": phone or None})).one()
    state = AgentState(row.state_id, row.state_agent_key, row.state_list_status) if row.state_id is not None else None
    return ListState(
        agents=tuple(Agent(*agent) for agent in row.agents),
        agent_state=state,
        opted_out=row.optout_status == "opted_out",  # O-5, as optout.is_opted_out
        active=frozenset((agent, key) for agent, key in row.active),
        registered=frozenset((agent, key) for agent, key in row.registered),
        aloware_id=str(row.aloware_id) if row.aloware_id else None,
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
