"""The agent directory seed (spec/outbound.md L-6): CHRIS, RAFI and UNASSIGNED, each matched
to the first GHL user and the first Aloware user whose name or e-mail contains the agent's
display name. Re-running updates rows and keeps values that were found before."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.models import AgentDirectory

DEFAULT_AGENTS = (
    {"agent_key": "CHRIS", "display_name": "Chris", "field": "Chris", "tag": "Owner: Chris"},
    {"agent_key": "RAFI", "display_name": "Rafi", "field": "Rafi", "tag": "Owner: Rafi"},
    {"agent_key": "UNASSIGNED", "display_name": "Unassigned", "field": None, "tag": None},
)


def _match(users: list[dict[str, Any]], display: str) -> dict[str, Any] | None:
    needle = display.lower()
    for user in users:
        if needle in str(user.get("name") or "").lower() or needle in str(user.get("email") or "").lower():
            return user
    return None


async def seed_agents(engine: AsyncEngine, ghl_users: list[dict[str, Any]],
                      aloware_users: list[dict[str, Any]]) -> int:
    """Insert or update the default agents; the number of rows inserted."""
    inserted = 0
    async with engine.begin() as conn:
        for agent in DEFAULT_AGENTS:
            ghl = _match(ghl_users, agent["display_name"]) if agent["agent_key"] != "UNASSIGNED" else None
            alo = _match(aloware_users, agent["display_name"]) if agent["agent_key"] != "UNASSIGNED" else None
            found = {"ghl_owner_id": str(ghl["id"]) if ghl else None,
                     "ghl_owner_email": str(ghl.get("email")) if ghl and ghl.get("email") else None,
                     "aloware_user_id": str(alo["id"]) if alo else None}
            existing = (await conn.execute(select(AgentDirectory).where(
                AgentDirectory.agent_key == agent["agent_key"]))).first()
            if existing is None:
                await conn.execute(pg_insert(AgentDirectory).values(
                    agent_key=agent["agent_key"], display_name=agent["display_name"],
                    ghl_assigned_agent_field_value=agent["field"], required_tag=agent["tag"], is_active=True,
                    **found))
                inserted += 1
                continue
            keep = {k: v for k, v in found.items() if v is not None}
            await conn.execute(update(AgentDirectory).where(AgentDirectory.id == existing.id).values(
                display_name=agent["display_name"], is_active=True, **keep))
    return inserted
