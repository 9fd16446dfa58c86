"""Agents: the directory seed (spec/outbound.md L-6) and the agent custom field of L-0.

The seed writes CHRIS, RAFI and UNASSIGNED, each matched to the first GHL user and the first
Aloware user whose name or e-mail contains the agent's display name. Re-running updates rows
and keeps values that were found before.

:class:`AgentField` reads a contact's agent custom field (L-0 priority 2) for aloware-sync's
list rules and the admin rebuild alike, so both resolve a contact to the same agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypedDict

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clients.ghl import GhlClient, GhlContact
from services.domain.call_lists import custom_field_id
from services.infra.db.models import AgentDirectoryRow
from services.infra.errors import Permanent
from services.infra.logging import get_logger

log = get_logger(__name__)
# at most one definitions read per this many seconds while the key stays unresolved or
# contacts carry field ids the last read did not have (a location without the field must
# not cost a GHL call per event)
FIELD_REFRESH_S = 60.0


class DefaultAgent(TypedDict):
    """One agent the seed writes (spec/outbound.md L-6): no field value or tag for UNASSIGNED."""

    agent_key: str
    display_name: str
    field: str | None
    tag: str | None


DEFAULT_AGENTS: tuple[DefaultAgent, ...] = (
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


async def seed_agents(engine: AsyncEngine, ghl_users: list[dict[str, Any]], aloware_users: list[dict[str, Any]]) -> int:
    """Insert or update the default agents; the number of rows inserted."""
    inserted = 0
    async with engine.begin() as conn:
        for agent in DEFAULT_AGENTS:
            ghl = _match(ghl_users, agent["display_name"]) if agent["agent_key"] != "UNASSIGNED" else None
            alo = _match(aloware_users, agent["display_name"]) if agent["agent_key"] != "UNASSIGNED" else None
            found = {
                "ghl_owner_id": str(ghl["id"]) if ghl else None,
                "ghl_owner_email": str(ghl.get("email")) if ghl and ghl.get("email") else None,
                "aloware_user_id": str(alo["id"]) if alo else None,
            }
            existing = (
                await conn.execute(select(AgentDirectoryRow).where(AgentDirectoryRow.agent_key == agent["agent_key"]))
            ).first()
            if existing is None:
                await conn.execute(
                    pg_insert(AgentDirectoryRow).values(
                        agent_key=agent["agent_key"],
                        display_name=agent["display_name"],
                        ghl_assigned_agent_field_value=agent["field"],
                        required_tag=agent["tag"],
                        is_active=True,
                        **found,
                    )
                )
                inserted += 1
                continue
            keep = {k: v for k, v in found.items() if v is not None}
            await conn.execute(
                update(AgentDirectoryRow)
                .where(AgentDirectoryRow.id == existing.id)
                .values(display_name=agent["display_name"], is_active=True, **keep)
            )
    return inserted


class AgentField:
    """The value of the custom field ``GHL_ASSIGNED_AGENT_FIELD_KEY`` on a GHL contact.

    GHL contacts carry custom fields as ``{id, value}`` only, never the key, so the key is
    resolved to the field's id through the location's definitions (G9), cached. The cache is
    refreshed on a miss: while the key resolves to nothing, or when a contact carries a field
    id the cached definitions do not have (a field created, or deleted and made again, since
    they were read), at most once per ``refresh_s``. A GHL outage (``RetryLater``) propagates,
    as resolving without the field would put the contact on the wrong agent's lists; a
    refusal (``Permanent``, e.g. a token without ``locations/customFields.readonly``) is
    logged and the field counts as absent until the next refresh.
    """

    def __init__(
        self,
        ghl: GhlClient,
        key: str,
        *,
        refresh_s: float = FIELD_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ghl = ghl
        self.key = key.strip()
        self._refresh_s = refresh_s
        self._clock = clock
        self._loaded_at: float | None = None
        self._field_id: str | None = None
        self._known: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()

    async def value(self, contact: GhlContact) -> str | None:
        """The contact's agent-field value (None when it has none or the field is unknown)."""
        if not self.key:
            return None
        for item in contact.custom_fields:  # an id configured directly, or a body that names its keys
            extra = item.model_extra or {}
            if self.key in (item.id, extra.get("key"), extra.get("fieldKey")):
                return _text(item.value)
        field_id = await self.field_id({item.id for item in contact.custom_fields})
        return (
            next((_text(item.value) for item in contact.custom_fields if item.id == field_id), None)
            if field_id
            else None
        )

    async def field_id(self, seen: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The resolved field id; ``seen`` are the ids a contact carries (a miss if unknown)."""
        if not self.key:
            return None
        if self._loaded_at is None or self._missed(seen):
            async with self._lock:
                if self._loaded_at is None or (
                    self._missed(seen) and self._clock() - self._loaded_at >= self._refresh_s
                ):
                    await self._load()
        return self._field_id

    def _missed(self, seen: set[str] | frozenset[str]) -> bool:
        return self._field_id is None or not set(seen) <= self._known

    async def _load(self) -> None:
        try:
            definitions = await self._ghl.custom_fields()
        except Permanent as exc:
            log.warning("ghl_custom_fields_unavailable", error=str(exc))
            definitions = []
        self._known = frozenset(str(d["id"]) for d in definitions if d.get("id"))
        self._field_id = custom_field_id(self.key, definitions)
        self._loaded_at = self._clock()
        if self._field_id is None:
            log.warning("agent_field_not_found", key=self.key, fields=len(definitions))


def _text(value: Any) -> str | None:
    """A field value as text: a multi-option field's first option; None when empty."""
    if isinstance(value, list):
        value = next((v for v in value if v not in (None, "")), None)
    return str(value) if value not in (None, "") else None
