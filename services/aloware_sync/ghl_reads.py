"""The reads of GHL aloware-sync's rules make (G1, L-0, L-1), with the caches that keep them
from costing a GHL call per event: users (owner e-mails) and pipeline stages for ten
minutes, the agent custom field through ``AgentField``'s definitions cache."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from services.clients.ghl import GhlClient, GhlContact
from services.domain.call_lists import ContactView
from services.infra.errors import Permanent
from services.infra.logging import get_logger
from services.tooling.agents import AgentField

__all__ = ["CACHE_S", "GhlReads"]

log = get_logger(__name__)
CACHE_S = 600


class GhlReads:
    """Which GHL contact, owner, agent field and stage an event is about, for one process."""

    def __init__(self, ghl: GhlClient, agent_field_key: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ghl = ghl
        self._clock = clock
        self._agent_field = AgentField(ghl, agent_field_key)
        self._users: tuple[float, dict[str, str]] = (float("-inf"), {})
        self._stages: tuple[float, dict[str, str]] = (float("-inf"), {})

    async def contact(self, ghl_id: str) -> GhlContact | None:
        """G1: the contact as GHL has it now (None: gone)."""
        return await self._ghl.get_contact(ghl_id)

    async def view(self, contact: GhlContact) -> ContactView:
        """L-0's inputs: owner id and e-mail, the agent field's value, the tags."""
        return ContactView(
            contact.assigned_to,
            await self._user_email(contact.assigned_to),
            await self._agent_field.value(contact),
            tuple(contact.tags),
        )

    async def stage(self, payload: Mapping[str, Any]) -> str | None:
        """L-1: an opportunity event's stage name, from the body, else its stage id resolved."""
        for name in ("pipelineStage", "stage", "status"):
            value = payload.get(name)
            if isinstance(value, str) and value:
                return value
        stage_id = payload.get("pipelineStageId")
        if not stage_id:
            return None
        at, stages = self._stages
        if self._clock() - at > CACHE_S:
            stages = await self._ghl.pipeline_stages()
            self._stages = (self._clock(), stages)
        return stages.get(str(stage_id))

    async def _user_email(self, user_id: str | None) -> str | None:
        if not user_id:
            return None
        at, users = self._users
        if self._clock() - at > CACHE_S:
            try:  # RetryLater propagates: an empty map would resolve the wrong agent (L-0) for 10 min
                users = {str(u.get("id")): str(u.get("email") or "") for u in await self._ghl.list_users()}
            except Permanent as exc:
                log.warning("ghl_users_unavailable", error=str(exc))
                users = {}
            self._users = (self._clock(), users)
        return users.get(user_id) or None
