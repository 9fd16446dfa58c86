"""The one place verity-sync's rules touch the world: it performs the operations a planner
yields (``rules/ops.py``) and sends the answers back.

It owns what must not be left to a planner: the effect claim of every SMS (``m2:<GHL
messageId>``, services/domain/effects.py) and its settlement, the echo ledger
(``message_mappings``, M-4), the ``sync_log`` rows, and which failures a rule may tolerate:
a failed step is thrown into the planner as ``StepFailed`` (AP-4 logs and carries on); a
planner that does not catch it gets its original error raised, unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from services.domain import effects, store
from services.domain.rules import RuleContext
from services.infra.db.models import MessageMappingRow
from services.infra.delivery import Outcome
from services.infra.errors import OutcomeUnknown, Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.verity_sync.collaborators import (
    VERITY_DB_ERRORS,
    AnalyticsEvents,
    GhlLookups,
    StatusReports,
    VerityApi,
    VerityLeads,
)
from services.verity_sync.known import mapped_reach
from services.verity_sync.rules.forward import RULE as FORWARD_RULE
from services.verity_sync.rules.ops import (
    FindAppointmentContact,
    FindGhlDuplicate,
    FindVerityContact,
    ForwardWebhook,
    LinkLead,
    LogSync,
    Operation,
    Plan,
    PublishAnalyticsUpdate,
    ReachedBroadcasts,
    ReadGhlContact,
    ReadMapping,
    ReportStatus,
    SendSmsOnce,
    SmsSent,
    StepFailed,
)

log = get_logger(__name__)
SEND_EFFECT = "verity.send_message"
# a step's failure a rule may tolerate: Verity's database failing, or a vendor's refusal or
# outage; our own rate budget running dry is not a failure (it waits, losing nothing)
TOLERABLE: tuple[type[BaseException], ...] = (*VERITY_DB_ERRORS, Permanent, RetryLater)


class VerityExecutor:
    """Performs verity-sync's operations with its collaborators (``ghl`` None: GHL is not
    configured, and planners are told so by the context, so they never ask it)."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        *,
        api: VerityApi,
        leads: VerityLeads,
        ghl: GhlLookups | None,
        reports: StatusReports,
        analytics: AnalyticsEvents,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._api = api
        self._leads = leads
        self._ghl = ghl
        self._reports = reports
        self._analytics = analytics

    async def run(self, plan: Plan, event: WebhookEvent, ctx: RuleContext) -> Outcome:
        """Drive ``plan`` to its outcome for one delivery attempt of ``event``."""
        try:
            op = next(plan)
            while True:
                try:
                    answer = await self._perform(op, event, ctx)
                except TOLERABLE as exc:
                    if isinstance(exc, RetryLater) and not exc.counts_as_attempt:
                        raise  # our own budget (burst or daily quota) or another attempt's claim: wait
                    op = self._failed_step(plan, op, exc)
                    continue
                op = plan.send(answer)
        except StopIteration as stop:
            outcome: Outcome = stop.value
            return outcome
        finally:
            plan.close()

    @staticmethod
    def _failed_step(plan: Plan, op: Operation, exc: BaseException) -> Operation:
        """Throw the failure in; the planner's next operation if it tolerates it, else the
        original error (``StopIteration`` when the planner returns at once)."""
        step: Operation | None = None
        with contextlib.suppress(StepFailed):  # not tolerated: raised below as it was
            step = plan.throw(StepFailed(type(exc).__name__, str(exc)))
        if step is None:
            raise exc
        log.warning("rule_step_failed_tolerated", operation=type(op).__name__, error=type(exc).__name__)
        return step

    async def _perform(self, op: Operation, event: WebhookEvent, ctx: RuleContext) -> Any:
        match op:
            case LogSync():
                async with self._engine.begin() as conn:
                    await self._log(conn, op, event, ctx)
                return None
            case ForwardWebhook(body_b64=body, signature=signature):
                return await self._api.forward(base64.b64decode(body), signature)
            case ReportStatus(ghl_message_id=message_id, status=status, error=error):
                await self._reports.report(message_id, status, dict(error) if error else None)
                return None
            case SendSmsOnce():
                return await self._send_once(op, event, ctx)
            case FindAppointmentContact(appointment_id=appointment_id):
                return await self._lookups().appointment_contact(appointment_id)
            case FindGhlDuplicate(phone=phone, email=email):
                return await self._lookups().duplicate(phone=phone, email=email)
            case ReadMapping(ghl_contact_id=contact_id):
                async with self._engine.connect() as conn:
                    return await mapped_reach(conn, contact_id)
            case ReadGhlContact(ghl_contact_id=contact_id):
                return await self._lookups().reach(contact_id)
            case FindVerityContact(phone=phone, email=email):
                return await self._leads.find_contact(phone, email)
            case LinkLead(verity_contact_id=contact_id, appointment_id=appointment_id):
                await self._leads.link_lead(contact_id, appointment_id)
                return None
            case ReachedBroadcasts(verity_contact_id=contact_id):
                return await self._leads.reached_broadcasts(contact_id)
            case PublishAnalyticsUpdate(broadcast_id=broadcast, appointment_id=appointment, ghl_contact_id=contact):
                await self._analytics.publish(broadcast, appointment, contact)
                return None
        raise TypeError(f"verity-sync has no executor for {type(op).__name__}")

    def _lookups(self) -> GhlLookups:
        if self._ghl is None:  # a planner asked although the context said GHL is not configured
            raise Permanent("GHL_API_KEY / GHL_LOCATION_ID are not set")
        return self._ghl

    async def _log(
        self, conn: Any, op: LogSync, event: WebhookEvent, ctx: RuleContext, target_id: str | None = None
    ) -> None:
        await store.log_sync(
            conn,
            direction=op.subject.direction,
            entity_type=op.subject.entity_type,
            source_id=op.subject.source_id,
            status=op.status,
            started_at=ctx.now,
            correlation_id=str(event.event_id),
            rule=op.rule,
            attempt=ctx.attempt,
            target_id=target_id or op.target_id,
            message=op.message,
            details=dict(op.details) if op.details is not None else None,
            # F-1's success row is how a later attempt knows the webhook went (known_forward):
            # committed with the forward, not left to the attempt's finish
            immediate=op.rule == FORWARD_RULE,
        )

    # --- M-2: the send's claim ----------------------------------------------------------------
    async def _send_once(self, op: SendSmsOnce, event: WebhookEvent, ctx: RuleContext) -> SmsSent:
        """Only the attempt that inserted the claim sends; another delivery running at the
        same time waits for it (``RetryLater``, not counted). A claim settled ``unknown``, or
        taken over from an attempt that died holding it, is never sent: Verity has no lookup
        by correlationId and a second SMS to a person cannot be taken back."""
        key = f"m2:{op.source_id}"
        async with self._engine.begin() as conn:
            held = await effects.claim(
                conn, key, SEND_EFFECT, event_id=event.event_id, ttl_s=self._settings.dfm_effect_claim_ttl_s
            )
        if isinstance(held, effects.Settled):
            if held.state == "done":
                return SmsSent("already_sent", held.vendor_id)
            raise OutcomeUnknown(
                f"send-message for correlationId {op.source_id} ({held.detail}); "
                "check Verity, then resolve the claim " + key
            )
        if held.recovered:
            await self._settle_unknown(key, "an attempt died after claiming the send")
            raise OutcomeUnknown(
                f"send-message for correlationId {op.source_id} was interrupted; "
                "check Verity, then resolve the claim " + key
            )
        try:
            verity_id = await self._api.send_message(op.to, op.body, op.source_id)
        except (RetryLater, Permanent) as exc:
            if not effects.may_have_landed(exc):
                async with self._engine.begin() as conn:
                    await effects.release(conn, held)
                raise
            await self._settle_unknown(key, exc.reason)
            if isinstance(exc, OutcomeUnknown):
                raise
            raise OutcomeUnknown(f"send-message {exc.reason} (correlationId {op.source_id})", cause=exc.cause) from None
        async with self._engine.begin() as conn:
            await effects.done(conn, key, verity_id)
            values = {
                "verity_message_id": verity_id,
                "correlation_id": op.source_id,
                "ghl_contact_id": op.ghl_contact_id,
                "to_number": op.to,
                "body_sha256": hashlib.sha256(op.body.strip().encode()).hexdigest(),
                "direction": "outbound",
                "ghl_sync_status": "synced",
                "updated_at": datetime.now(UTC),
            }
            await conn.execute(
                pg_insert(MessageMappingRow)
                .values(ghl_message_id=op.source_id, **values)
                .on_conflict_do_update(index_elements=["ghl_message_id"], set_=values)
            )
            await self._log(conn, op.log, event, ctx, target_id=verity_id)
        return SmsSent("sent", verity_id)

    async def _settle_unknown(self, key: str, detail: str) -> None:
        async with self._engine.begin() as conn:
            await effects.unknown(conn, key, detail)
