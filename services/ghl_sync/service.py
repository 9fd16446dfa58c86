"""ghl-sync: the rules whose write target is GHL (spec/outbound.md §1.1). Each event goes
through the dispatch table (``routes.ROUTES``) to its rule's planner, and the executor
performs the plan: CA (Aloware contact → GHL contact), CL and AR (calls and call artifacts
as notes), D-2 (disposition), D-1 (Aloware DNC), O-2 (texting opt-out), M-1/M-4 (texting
messages and their status) and B (broadcast analytics)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.ghl_sync.broadcast_figures import BroadcastFigures
from services.ghl_sync.contacts import GhlContacts
from services.ghl_sync.context import rule_context
from services.ghl_sync.executor import GhlExecutor
from services.ghl_sync.explain import explain
from services.ghl_sync.routes import route_for
from services.ghl_sync.rules.contact import CustomFieldIds
from services.ghl_sync.writes import GhlWrites
from services.infra.delivery import Outcome
from services.infra.settings import Settings
from services.infra.trace import is_replay
from services.infra.verity_db import VerityDatabase

__all__ = ["GhlSync", "explain"]


class GhlSync:
    """The composition of ghl-sync's rules: collaborators built once per process, and the
    handler the delivery shell calls for each attempt."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        ghl: GhlClient,
        aloware: AlowareClient | None = None,
        conversations: GhlConversations | None = None,
    ) -> None:
        self.settings = settings
        ttl = settings.dfm_effect_claim_ttl_s
        ids = CustomFieldIds(
            settings.ghl_cf_aloware_contact_id, settings.ghl_cf_lead_source, settings.ghl_cf_intake_source
        )
        # ``aloware`` answers CL-1's phone lookup; without a token the call's own data is used
        self.contacts = GhlContacts(
            ghl, aloware, cf_ids=ids, claim_ttl_s=ttl, fault_pause_s=settings.dfm_fault_pause_after_vendor_write_s
        )
        self.writes = GhlWrites(ghl, conversations, claim_ttl_s=ttl)
        self.figures = BroadcastFigures(VerityDatabase(settings))
        self.executor = GhlExecutor(
            engine, self.contacts, self.writes, self.figures, echo_window_s=settings.echo_window_seconds
        )

    async def aclose(self) -> None:
        """Close what the rules opened (the Verity database pool)."""
        await self.figures.aclose()

    async def handle(self, event: WebhookEvent, attempt: int) -> Outcome:
        """Run the event's rule as delivery ``attempt`` (its context is built here, once)."""
        route = route_for(event)
        if route is None:
            return Outcome("skipped", f"Unhandled event type: {event.event_name}")
        ctx = rule_context(self.settings, attempt=attempt, replay=is_replay())
        return await self.executor.run(route.plan(event, ctx), event, ctx)
