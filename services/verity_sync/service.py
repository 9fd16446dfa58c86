"""verity-sync: rules whose write target is Verity (spec/outbound.md §1.8 M-2, §1.13 AP,
§1.16 F-1), as a dispatch table from subject to handler.

Each handler parses the typed payload, reads what PostgreSQL knows (``known.py``), builds the
plan (``rules/``) and has the executor perform it (``executor.py``). The context of the
attempt (``RuleContext``: clock, attempt, replay, region, and which vendors are configured as
flags) is built once per delivery here, at the edge; planners read nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads.provider import ProviderOutboundMessage
from contracts.subjects import subject_matches
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.http import VendorHttp
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.infra.errors import Permanent
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.trace import is_replay
from services.infra.verity_db import VerityDatabase
from services.verity_sync.collaborators import (
    SEND_PATH,
    AnalyticsEvents,
    GhlLookups,
    StatusReports,
    VerityApi,
    VerityLeads,
    forward_secret,
)
from services.verity_sync.executor import VerityExecutor
from services.verity_sync.known import known_appointment, known_forward, known_send
from services.verity_sync.rules.appointment import LINKED, appointment_ref, plan_appointment_link
from services.verity_sync.rules.forward import plan_forward
from services.verity_sync.rules.ops import GHL_API, VERITY_API, VERITY_DATABASE, VERITY_SEND
from services.verity_sync.rules.provider_message import plan_send_sms

log = get_logger(__name__)


def rule_flags(settings: Settings, *, ghl: bool) -> frozenset[str]:
    """Which of verity-sync's vendors are configured, as the planners' context flags."""
    flags = {
        VERITY_API: bool(settings.verity_base_url),
        VERITY_SEND: bool(settings.verity_api_key and settings.verity_base_url),
        VERITY_DATABASE: bool(settings.verity_database_url),
        GHL_API: ghl,
    }
    return frozenset(name for name, on in flags.items() if on)


def parse_provider_message(event: WebhookEvent) -> ProviderOutboundMessage:
    """The one parser of a provider delivery: the contract model (``Permanent`` if invalid)."""
    try:
        return ProviderOutboundMessage.model_validate(event.payload)
    except ValidationError as exc:
        raise Permanent(f"invalid provider message: {exc.errors()[0]['msg']}") from None


class VeritySync:
    """Composition root of verity-sync's rules: the collaborators, the executor and the
    dispatch table (``ROUTES``)."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        conversations: GhlConversations | None,
        http: VendorHttp | None = None,
        ghl: GhlClient | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        secret = forward_secret(settings)
        if settings.verity_forward_secret is None and secret is not None:
            log.warning(
                "verity_forward_uses_the_inbound_secret",
                hint="set VERITY_FORWARD_SECRET; production sends no secret without it",
            )
        elif secret is None and settings.verity_base_url:
            log.warning("verity_forward_without_secret", hint="set VERITY_FORWARD_SECRET")
        self.api = VerityApi(
            http or VendorHttp("verity", settings.verity_base_url or "http://localhost:3000"),
            secret=secret,
            api_key=settings.verity_api_key,
        )
        self.leads = VerityLeads(VerityDatabase(settings))
        self.analytics = AnalyticsEvents(settings)
        self.executor = VerityExecutor(
            settings,
            engine,
            api=self.api,
            leads=self.leads,
            ghl=GhlLookups(ghl) if ghl is not None else None,
            reports=StatusReports(conversations),
            analytics=self.analytics,
        )
        self.flags = rule_flags(settings, ghl=ghl is not None)

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.leads.aclose()
        await self.analytics.aclose()

    def context(self, attempt: int) -> RuleContext:
        """The attempt's context (the delivery shell's trace says whether it is a replay)."""
        return RuleContext.for_attempt(self.settings, attempt=attempt, replay=is_replay(), flags=self.flags)

    async def handle(self, event: WebhookEvent, attempt: int) -> Outcome:
        """One delivery: the first route whose subject matches the event's."""
        return await route_for(event.subject).handler(self, event, self.context(attempt))

    # --- handlers ------------------------------------------------------------------------
    async def forward(self, event: WebhookEvent, ctx: RuleContext) -> Outcome:
        """F-1 for every GHL webhook."""
        async with self.engine.connect() as conn:
            known = await known_forward(conn, event)
        return await self.executor.run(plan_forward(event, known, ctx), event, ctx)

    async def forward_and_link(self, event: WebhookEvent, ctx: RuleContext) -> Outcome:
        """F-1, then AP for a created or updated appointment: the event says ``applied`` when
        the lead was linked, else what the forward did."""
        forwarded = await self.forward(event, ctx)
        if event.canonical_type not in LINKED:
            return forwarded
        ref = appointment_ref(event)
        async with self.engine.connect() as conn:
            known = await known_appointment(conn, ref)
        linked = await self.executor.run(plan_appointment_link(ref, known, ctx), event, ctx)
        return linked if linked.outcome == "applied" else forwarded

    async def send_sms(self, event: WebhookEvent, ctx: RuleContext) -> Outcome:
        """M-2 for an agent's SMS."""
        sms = parse_provider_message(event)
        async with self.engine.connect() as conn:
            known = await known_send(conn, sms, ctx.region)
        return await self.executor.run(plan_send_sms(sms, known, ctx), event, ctx)

    async def unhandled_provider_message(self, event: WebhookEvent, ctx: RuleContext) -> Outcome:
        return Outcome("skipped", f"Unhandled provider message type: {event.event_name}")


Handler = Callable[[VeritySync, WebhookEvent, RuleContext], Awaitable[Outcome]]


@dataclass(frozen=True)
class Route:
    """Events on ``subject`` (a NATS pattern inside the durable's filters) go to ``handler``."""

    subject: str
    handler: Handler


# first match wins; together they take exactly contracts.streams.VERITY_SYNC's filter subjects
ROUTES: tuple[Route, ...] = (
    Route("webhooks.ghl.provider_message.provider_outbound_sms", VeritySync.send_sms),
    Route("webhooks.ghl.provider_message.>", VeritySync.unhandled_provider_message),
    Route("webhooks.ghl.appointment.>", VeritySync.forward_and_link),
    Route("webhooks.ghl.>", VeritySync.forward),
)


def route_for(subject: str) -> Route:
    for route in ROUTES:
        if subject_matches(route.subject, subject):
            return route
    raise Permanent(f"verity-sync has no rule for {subject}")


__all__ = ["ROUTES", "SEND_PATH", "Route", "VeritySync", "forward_secret", "route_for"]
