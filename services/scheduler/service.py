"""The scheduler: publishes periodic commands to the JOBS stream (APScheduler).

``jobs.sweep`` on ``SWEEP_CRON``, ``jobs.alerts`` on ``ALERT_CHECK_CRON``, ``jobs.purge``
(retention) on ``PURGE_CRON`` (daily by default) and, when set, ``jobs.reconcile`` on
``RECONCILE_CRON``. Run as many replicas as availability needs: each
firing is published with ``Nats-Msg-Id = <command>:<slot time>``, so JetStream's duplicate
window keeps exactly one command per slot whatever the number of schedulers. A publish that
fails is retried until the slot is over (NATS restarting, a cluster electing a leader).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from nats.js import JetStreamContext
from prometheus_client import Counter
from pydantic import BaseModel

from contracts.commands import (
    AlertCheckRequested,
    PurgeRequested,
    ReconcileRequested,
    SweepRequested,
)
from contracts.envelope import HEADER_MSG_ID
from contracts.subjects import ALERTS_SUBJECT, PURGE_SUBJECT, RECONCILE_SUBJECT, SWEEP_SUBJECT
from services.infra.cron import current_slot, parse_cron
from services.infra.logging import get_logger
from services.infra.outbox import NATS_ERRORS
from services.infra.settings import Settings

log = get_logger(__name__)
PUBLISHED = Counter("dfm_scheduler_commands_total", "Commands published by the scheduler", ["subject", "result"])


def schedule_of(settings: Settings) -> list[tuple[str, str, Callable[[str], BaseModel]]]:
    """(subject, cron, command factory for a slot) for every enabled periodic command."""
    entries: list[tuple[str, str, Callable[[str], BaseModel]]] = []
    if settings.sweep_cron:
        entries.append(
            (SWEEP_SUBJECT, settings.sweep_cron, lambda slot: SweepRequested(slot=slot, requested_by="scheduler"))
        )
    if settings.alert_check_cron:
        entries.append(
            (
                ALERTS_SUBJECT,
                settings.alert_check_cron,
                lambda slot: AlertCheckRequested(slot=slot, requested_by="scheduler"),
            )
        )
    if settings.purge_cron:
        entries.append(
            (PURGE_SUBJECT, settings.purge_cron, lambda slot: PurgeRequested(slot=slot, requested_by="scheduler"))
        )
    if settings.reconcile_cron:
        entries.append(
            (
                RECONCILE_SUBJECT,
                settings.reconcile_cron,
                lambda slot: ReconcileRequested(limit=settings.reconcile_batch_size, requested_by="scheduler"),
            )
        )
    return entries


class CommandScheduler:
    """APScheduler jobs that publish one command per slot."""

    def __init__(self, settings: Settings, js: JetStreamContext) -> None:
        self.settings = settings
        self.js = js
        self.scheduler = AsyncIOScheduler(timezone="UTC")

    def start(self) -> None:
        for subject, cron, factory in schedule_of(self.settings):
            trigger = parse_cron(cron)
            self.scheduler.add_job(
                self.fire,
                trigger,
                args=(subject, trigger, factory),
                id=subject,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=30,
            )
            log.info("scheduled", subject=subject, cron=cron)
        self.scheduler.start()

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=False)

    async def fire(self, subject: str, trigger: CronTrigger, factory: Callable[[str], BaseModel]) -> None:
        """Publish the command of the slot that is firing now."""
        slot_time = current_slot(trigger, datetime.now(UTC))
        if slot_time is None:
            return
        slot = slot_time.isoformat()
        command = factory(slot)
        msg_id = f"{subject}:{slot}"
        delay = 0.2
        while True:
            try:
                ack = await self.js.publish(
                    subject,
                    command.model_dump_json().encode(),
                    headers={HEADER_MSG_ID: msg_id},
                    timeout=self.settings.dfm_publish_timeout,
                )
            except NATS_ERRORS as exc:
                next_fire = trigger.get_next_fire_time(slot_time, datetime.now(UTC))
                if next_fire is None or (next_fire - datetime.now(UTC)).total_seconds() < delay:
                    PUBLISHED.labels(subject, "failed").inc()
                    log.error("scheduled_command_lost_slot", subject=subject, slot=slot, error=type(exc).__name__)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            result = "duplicate" if ack.duplicate else "published"
            PUBLISHED.labels(subject, result).inc()
            log.info("scheduled_command", subject=subject, slot=slot, result=result, seq=ack.seq)
            return
