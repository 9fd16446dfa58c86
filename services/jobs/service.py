"""The jobs consumer: commands from the JOBS stream (sweep, replay, reconcile, alert checks,
retention purge, the call-list seed and rebuild) and JetStream's dead-letter advisories.

Commands arrive on the durable ``jobs`` shared by every replica, through the FastStream front
every consumer shares, and are settled by ``services.jobs.commands.deliver_command`` (retried
on ``RetryLater`` or any failure, terminated on ``Permanent`` or when unreadable). ``execute``
is a table from command type to the runner that owns it. Dead-letter advisories (a consumer
reached ``max_deliver``, or terminated a message) are core-NATS messages, taken by one replica
of the queue group each, and recorded in ``dead_letters``; for max-deliveries the event's
delivery is also ended as ``dead``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import Gauge
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import (
    AgentsSeedRequested,
    AlertCheckRequested,
    ListsRebuildRequested,
    PurgeRequested,
    ReconcileRequested,
    ReplayRequested,
    SweepRequested,
)
from contracts.envelope import WebhookEvent
from contracts.lanes import LANES, Lane, lane_drain_seconds
from contracts.streams import CONSUMERS, GHL_SYNC, WEBHOOKS_STREAM
from contracts.streams import consumer as consumer_spec
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.infra.db.models import DeadLetterRow, EventDeliveryRow, ReconcileRunRow
from services.infra.delivery import DeliveryLedger, event_table
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.jobs.alerts import Alerter
from services.jobs.call_lists import CallListJobs
from services.jobs.commands import COMMANDS, deliver_command
from services.jobs.purge import Purger
from services.jobs.reconcile import ContactReconciler
from services.jobs.replay import Explainer, Replayer, ReplayReport
from services.jobs.sweep import Sweeper

log = get_logger(__name__)

ADVISORY_SUBJECTS = (
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
)
ADVISORY_QUEUE = "dfm-jobs-dead-letters"
__all__ = ["COMMANDS", "Jobs"]  # COMMANDS: subject -> model (services/jobs/commands.py)
MAX_ITEMS_RECORDED = 200
CONSUMER_PENDING = Gauge("dfm_consumer_pending_messages", "Messages not yet delivered to a durable", ["consumer"])
CONSUMER_ACK_PENDING = Gauge("dfm_consumer_ack_pending_messages", "Messages delivered, not yet acked", ["consumer"])
CONSUMER_REDELIVERED = Gauge("dfm_consumer_redelivered_messages", "Messages being redelivered", ["consumer"])
# ghl-sync's lanes (issue #18): the backlog of each (not yet acked: pending plus in flight) and
# the time it takes at the GHL budget (contracts.lanes.lane_drain_seconds)
LANE_BACKLOG = Gauge("dfm_lane_backlog_messages", "Messages of a lane not yet acked", ["consumer", "lane"])
LANE_DRAIN = Gauge(
    "dfm_lane_drain_seconds",
    "Expected time to drain a lane's backlog: backlog x DFM_LANE_REQUESTS_PER_EVENT / GHL budget per second, "
    "real-time served first",
    ["consumer", "lane"],
)


class Jobs:
    """Runs commands against one database and one NATS connection."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        nc: NatsClient,
        ghl: GhlClient | None = None,
        aloware: AlowareClient | None = None,
        explain: Explainer | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.nc = nc
        self.js = nc.jetstream(timeout=max(5.0, settings.dfm_publish_timeout))
        self.sweeper = Sweeper(settings, engine, self.js)
        self.replayer = Replayer(settings, engine, self.js, explain)
        self.reconciler = ContactReconciler(settings, engine, self.js, ghl)
        self.alerter = Alerter(settings, engine)
        self.purger = Purger(settings, engine)
        self.call_lists = CallListJobs(settings, engine, ghl, aloware)
        # one runner per command type; COMMANDS maps each subject to one of these types
        self.runners: dict[type[BaseModel], Callable[[Any], Awaitable[Any]]] = {
            SweepRequested: self.sweeper.run,
            ReplayRequested: self._replay,
            ReconcileRequested: self.reconciler.run,
            AlertCheckRequested: self._check_alerts,
            PurgeRequested: self.purger.run,
            AgentsSeedRequested: self.call_lists.seed,
            ListsRebuildRequested: self.call_lists.rebuild,
        }
        self._subs: list[Any] = []

    async def start_advisories(self) -> None:
        """Listen for dead-letter advisories (one replica of the queue group takes each)."""
        for subject in ADVISORY_SUBJECTS:
            self._subs.append(await self.nc.subscribe(subject, queue=ADVISORY_QUEUE, cb=self.on_advisory))

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await self.alerter.aclose()

    # --- commands --------------------------------------------------------------------------
    async def handle(self, msg: Msg) -> None:
        """One command message, settled by ``deliver_command``."""
        await deliver_command(msg, self.execute)

    async def execute(self, command: BaseModel) -> Any:
        """Run one command in-process (also used by the CLI's ``dfm sweep --here``)."""
        runner = self.runners.get(type(command))
        if runner is None:
            raise TypeError(type(command).__name__)
        return await runner(command)

    async def _replay(self, command: ReplayRequested) -> Any:
        """A replay's ``reconcile_runs`` row is written at the start (``running``), updated
        every ``Replayer.every`` events with the totals so far, and ends with the report."""
        run_id = await self._start_replay(command)

        async def progress(report: ReplayReport, selected: int) -> None:
            totals = {**report.progress_json(selected), "requestedBy": command.requested_by}
            log.info(
                "replay_progress",
                command_id=report.command_id,
                done=totals["done"],
                selected=selected,
                replayed=report.replayed,
                skipped=report.skipped,
            )
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(ReconcileRunRow).where(ReconcileRunRow.id == run_id).values(totals=_plain(totals))
                )

        try:
            report = await self.replayer.run(command, progress)
        except Exception as exc:
            await self._finish_replay(run_id, "error", None, f"{type(exc).__name__}: {exc}"[:500])
            raise
        await self._finish_replay(run_id, "success", self._recorded(command, report.as_json()), None)
        return report

    async def _check_alerts(self, _: AlertCheckRequested) -> Any:
        await self.refresh_consumer_gauges()
        return await self.alerter.check()

    @staticmethod
    def _recorded(command: ReplayRequested, report: dict[str, Any]) -> dict[str, Any]:
        return _plain({**report, "items": report["items"][:MAX_ITEMS_RECORDED], "requestedBy": command.requested_by})

    async def _start_replay(self, command: ReplayRequested) -> Any:
        """The command's row, ``running`` (one row per command: a retried command reuses it)."""
        totals = {"commandId": str(command.command_id), "dryRun": command.dry_run, "requestedBy": command.requested_by}
        async with self.engine.begin() as conn:
            run_id = await conn.scalar(
                select(ReconcileRunRow.id).where(
                    ReconcileRunRow.job_name == "replay",
                    ReconcileRunRow.totals["commandId"].astext == str(command.command_id),
                )
            )
            if run_id is not None:
                await conn.execute(
                    update(ReconcileRunRow)
                    .where(ReconcileRunRow.id == run_id)
                    .values(status="running", totals=totals, finished_at=None, error_message=None)
                )
                return run_id
            return await conn.scalar(
                insert(ReconcileRunRow)
                .values(job_name="replay", status="running", totals=totals)
                .returning(ReconcileRunRow.id)
            )

    async def _finish_replay(self, run_id: Any, status: str, totals: dict[str, Any] | None, error: str | None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": func.now(), "error_message": error}
        if totals is not None:
            values["totals"] = totals
        async with self.engine.begin() as conn:
            await conn.execute(update(ReconcileRunRow).where(ReconcileRunRow.id == run_id).values(**values))

    async def refresh_consumer_gauges(self) -> None:
        """Lag of every durable (what KEDA scales on), for dashboards and alerts, and the
        backlog and drain time of ghl-sync's lanes."""
        backlog: dict[Lane, int] = {}
        for spec in CONSUMERS:
            try:
                info = await self.js.consumer_info(spec.stream, spec.durable)
            except Exception as exc:  # noqa: BLE001 - a durable not created yet, or NATS away: skip this round
                log.debug("consumer_info_unavailable", consumer=spec.durable, error=type(exc).__name__)
                continue
            CONSUMER_PENDING.labels(spec.durable).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(spec.durable).set(info.num_ack_pending or 0)
            CONSUMER_REDELIVERED.labels(spec.durable).set(info.num_redelivered or 0)
            if spec.lane is not None:
                backlog[spec.lane] = (info.num_pending or 0) + (info.num_ack_pending or 0)
        if len(backlog) == len(LANES):  # both lanes read this round: a drain time from half is wrong
            drain = lane_drain_seconds(
                backlog, self.settings.dfm_lane_requests_per_event, await self._budget_per_second()
            )
            for lane in LANES:
                LANE_BACKLOG.labels(GHL_SYNC.owner, lane).set(backlog[lane])
                LANE_DRAIN.labels(GHL_SYNC.owner, lane).set(drain[lane])

    async def _budget_per_second(self) -> float:
        """The GHL budget's steady rate as all replicas see it (the learned window when there
        is one), else the configured one when the database does not answer."""
        try:
            return await RateBudget.for_ghl(self.engine, self.settings).per_second()
        except Exception as exc:  # noqa: BLE001 - a gauge; the configured figure is still a figure
            log.debug("budget_state_unavailable", error=type(exc).__name__)
            return self.settings.ghl_rate_limit_per_10s / 10

    # --- dead letters ----------------------------------------------------------------------
    async def on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            stream, consumer = advisory["stream"], advisory["consumer"]
            seq = int(advisory["stream_seq"])
        except (ValueError, KeyError, TypeError):
            log.warning("advisory_unreadable", subject=msg.subject)
            return
        kind = "max_deliveries" if ".MAX_DELIVERIES." in msg.subject else "terminated"
        try:
            await self.record_dead_letter(stream, consumer, seq, kind, advisory)
        except Exception:
            log.exception("dead_letter_not_recorded", stream=stream, consumer=consumer, stream_seq=seq)

    async def record_dead_letter(
        self, stream: str, consumer: str, seq: int, kind: str, advisory: dict[str, Any]
    ) -> None:
        """A dead letter under the durable JetStream named (``consumer``); the delivery it
        ends is the owning service's (a lane's durable records under its service)."""
        owner = _owner(consumer)
        deliveries = advisory.get("deliveries")
        subject: str | None = None
        event: WebhookEvent | None = None
        try:
            stored = await self.js.get_msg(stream, seq)
            subject = stored.subject
            if stream == WEBHOOKS_STREAM and stored.data:
                event = WebhookEvent.from_bytes(stored.data)
        except NotFoundError:
            pass
        except (ValidationError, ValueError):
            event = None
        if kind == "max_deliveries":
            reason = f"JetStream stopped redelivering after {deliveries} deliveries to {consumer}"
        else:
            # a command the jobs service refused keeps its reason in its reconcile_runs row
            unreadable = event is None and stream == WEBHOOKS_STREAM
            reason = advisory.get("reason") or (
                f"terminated by {consumer}" + (" (not a readable event envelope)" if unreadable else "")
            )
        async with self.engine.begin() as conn:
            await conn.execute(_dead_letter_upsert(stream, consumer, seq, subject, event, kind, deliveries, reason))
            open_delivery = None
            if event is not None and kind == "max_deliveries":
                open_delivery = (
                    await conn.execute(
                        select(EventDeliveryRow.status).where(
                            EventDeliveryRow.event_id == event.event_id, EventDeliveryRow.consumer == owner
                        )
                    )
                ).scalar()
        log.warning(
            "dead_letter_recorded",
            stream=stream,
            consumer=consumer,
            stream_seq=seq,
            kind=kind,
            event_id=str(event.event_id) if event else None,
        )
        if event is not None and kind == "max_deliveries" and open_delivery not in ("done", "dead"):
            if open_delivery is None:  # the consumer never got as far as claiming it
                async with self.engine.begin() as conn:
                    await conn.execute(
                        pg_insert(EventDeliveryRow)
                        .values(
                            event_id=event.event_id,
                            consumer=owner,
                            event_table=event_table(event),
                            status="processing",
                            attempts=int(deliveries or 0),
                        )
                        .on_conflict_do_nothing(index_elements=["event_id", "consumer"])
                    )
            await DeliveryLedger(self.engine, owner, self.settings).finish(event, "dead", error=reason)


def _owner(durable: str) -> str:
    """The service whose deliveries a durable carries (``ghl-sync`` for ``ghl-sync-bulk``); a
    durable that is not ours (a probe, an operator's) is its own."""
    try:
        return consumer_spec(durable).owner
    except KeyError:
        return durable


def _plain(totals: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready (UUIDs, times as strings)."""
    plain: dict[str, Any] = json.loads(json.dumps(totals, default=str))
    return plain


def _dead_letter_upsert(
    stream: str,
    consumer: str,
    seq: int,
    subject: str | None,
    event: WebhookEvent | None,
    kind: str,
    deliveries: Any,
    reason: str,
) -> Any:
    return (
        pg_insert(DeadLetterRow)
        .values(
            stream=stream,
            consumer=consumer,
            stream_seq=seq,
            subject=subject,
            event_id=event.event_id if event else None,
            kind=kind,
            deliveries=deliveries,
            reason=reason,
        )
        .on_conflict_do_nothing(index_elements=["stream", "consumer", "stream_seq"])
    )
