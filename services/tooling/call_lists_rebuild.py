"""Admin rebuild of agent call lists (spec/outbound.md L-5).

For each registry entry in scope, every ``active`` membership is re-validated: the GHL contact
still exists, L-0 still resolves it to this agent (with the same agent custom-field
resolution as aloware-sync, :class:`services.tooling.agents.AgentField`), L-1's "contact
changed" intent still includes this list key, and the mapping has an Aloware id. Invalid memberships become
``removed`` (reason ``rebuild``); then the Aloware list is cleared and the valid contacts are
added back. Run by the jobs service for the ``jobs.lists_rebuild`` command that
``POST /api/admin/lists/rebuild`` queues (the ingress only checks the scope with
:func:`lists_in_scope`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient
from services.domain import optout
from services.domain.call_lists import Agent, ContactView, list_intent, resolve_agent
from services.domain.contact import ghl_to_canonical
from services.infra.db.models import (
    AgentDirectoryRow,
    CallListRegistryRow,
    ContactListMembershipRow,
    ContactMappingRow,
)
from services.infra.errors import Permanent, RetryLater
from services.infra.settings import Settings
from services.tooling.agents import AgentField


@dataclass
class RebuildReport:
    rebuilt: int = 0
    errors: list[str] = field(default_factory=list)
    removed: int = 0


class UnknownList(Exception):
    """The (agent, list) pair is not in the registry."""


def unknown_list(agent_key: str | None, list_key: str | None) -> UnknownList:
    """The refusal of a scope with no registry entry (spec/outbound.md L-5's 404 message)."""
    return UnknownList(f"List {agent_key or '*'}/{list_key or '*'} not found in registry")


async def lists_in_scope(conn: AsyncConnection, agent_key: str | None, list_key: str | None) -> list[Any]:
    """The registry entries a rebuild of (``agent_key``, ``list_key``) covers; None is any."""
    stmt = select(CallListRegistryRow)
    if agent_key:
        stmt = stmt.where(CallListRegistryRow.agent_key == agent_key)
    if list_key:
        stmt = stmt.where(CallListRegistryRow.list_key == list_key)
    return list((await conn.execute(stmt)).all())


async def rebuild_lists(
    settings: Settings,
    engine: AsyncEngine,
    ghl: GhlClient,
    aloware: AlowareClient,
    agent_key: str | None,
    list_key: str | None,
) -> RebuildReport:
    report = RebuildReport()
    async with engine.connect() as conn:
        entries = await lists_in_scope(conn, agent_key, list_key)
        agents = [
            Agent(r.agent_key, r.ghl_owner_id, r.ghl_owner_email, r.ghl_assigned_agent_field_value, r.required_tag)
            for r in (
                await conn.execute(
                    select(AgentDirectoryRow)
                    .where(AgentDirectoryRow.is_active.is_(True))
                    .order_by(AgentDirectoryRow.agent_key)
                )
            ).all()
        ]
    if not entries:
        raise unknown_list(agent_key, list_key)
    emails = {str(u.get("id")): str(u.get("email") or "") for u in await ghl.list_users()}
    agent_field = AgentField(ghl, settings.ghl_assigned_agent_field_key)  # one definitions read per rebuild
    for entry in entries:
        if not entry.aloware_list_id:
            report.errors.append(f"{entry.agent_key}/{entry.list_key}: no Aloware list id yet")
            continue
        async with engine.connect() as conn:
            members = (
                await conn.execute(
                    select(ContactListMembershipRow.contact_id).where(
                        ContactListMembershipRow.agent_key == entry.agent_key,
                        ContactListMembershipRow.list_key == entry.list_key,
                        ContactListMembershipRow.status == "active",
                    )
                )
            ).all()
        valid: list[tuple[str, str]] = []
        for (ghl_id,) in members:
            aloware_id = await _still_valid(settings, engine, ghl, agents, emails, agent_field, entry, ghl_id)
            if aloware_id is None:
                async with engine.begin() as conn:
                    await conn.execute(
                        update(ContactListMembershipRow)
                        .where(
                            ContactListMembershipRow.contact_id == ghl_id,
                            ContactListMembershipRow.agent_key == entry.agent_key,
                            ContactListMembershipRow.list_key == entry.list_key,
                        )
                        .values(status="removed", reason="rebuild", updated_at=datetime.now(UTC))
                    )
                report.removed += 1
            else:
                valid.append((ghl_id, aloware_id))
        try:
            await aloware.clear_list(str(entry.aloware_list_id))
            for _, aloware_id in valid:
                await aloware.add_to_list(str(entry.aloware_list_id), aloware_id)
        except (Permanent, RetryLater) as exc:
            report.errors.append(f"{entry.agent_key}/{entry.list_key}: {exc}")
            continue
        report.rebuilt += 1
    return report


async def _still_valid(
    settings: Settings,
    engine: AsyncEngine,
    ghl: GhlClient,
    agents: list[Agent],
    emails: dict[str, str],
    agent_field: AgentField,
    entry: Any,
    ghl_id: str,
) -> str | None:
    """The Aloware id when the membership still holds, else None."""
    contact = await ghl.get_contact(ghl_id)
    if contact is None:
        return None
    view = ContactView(
        contact.assigned_to,
        emails.get(contact.assigned_to or "") or None,
        await agent_field.value(contact),
        tuple(contact.tags),
    )
    agent, _ = resolve_agent(agents, view, settings.default_agent_key)
    if agent != entry.agent_key:
        return None
    phone = ghl_to_canonical(contact, settings.default_phone_region).phone
    async with engine.connect() as conn:
        opted_out = await optout.is_opted_out(conn, phone)
        aloware_id = await conn.scalar(
            select(ContactMappingRow.aloware_contact_id).where(ContactMappingRow.ghl_contact_id == ghl_id)
        )
    add, _ = list_intent(
        "contact.changed",
        {},
        contact.tags,
        opted_out=opted_out,
        list_keys=list(settings.agent_list_keys),
        mode=settings.tag_match_mode,
    )
    if entry.list_key not in add or not aloware_id:
        return None
    return str(aloware_id)
