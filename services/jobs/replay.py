"""Replays (spec/inbound.md §4.2, ARCHITECTURE.md §6): events chosen by id, or by a subject
filter with a time or stream-sequence range of the WEBHOOKS stream, are reset to
``pending`` and published again for every consumer that takes them.

Effects are not repeated: the rules re-read vendor state during a replay and write only
what differs (spec/outbound.md LP-2), so replaying done events writes nothing, and a
contact deleted in the vendor since is recreated once. Quarantined events are left alone
unless ``force`` releases them. ``dry_run`` selects and describes without changing anything.

A subject replay reads the stream once, in batches (``SCAN_BATCH``), and re-publishes the
envelope it read there: no ``get_msg`` per event. Progress goes to the ``progress`` reporter
(the CLI's bar or lines) per event and to ``on_progress`` every ``PROGRESS_EVERY`` events (the
jobs service logs it and writes it to the command's ``reconcile_runs`` row, which
``GET /api/admin/replays/{commandId}`` and the MCP tool read while it runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import ReplayRequested
from contracts.envelope import HEADER_REDRIVE, WebhookEvent
from contracts.streams import WEBHOOKS_STREAM, expected_consumers
from services.infra.db.models import TableName
from services.infra.logging import get_logger
from services.infra.redrive import envelope_for, publish_redrive
from services.infra.settings import Settings
from services.tooling.operations import OperationError, find_event, reset_for_replay
from services.tooling.progress import ProgressReporter, SilentProgress

log = get_logger(__name__)
SCAN_BATCH = 256
PROGRESS_EVERY = 250  # events between two progress reports of the jobs service

# Describes what the rules would do with an event, for --dry-run (given by the CLI, which
# may import the sync services; the jobs service itself passes none).
Explainer = Callable[[WebhookEvent], Awaitable[list[str]]]
# Told the report so far and the events selected: at the start, every PROGRESS_EVERY events.
ProgressHook = Callable[["ReplayReport", int], Awaitable[None]]
# An event to replay: its id, and the envelope read on the stream by the scan (None: by id)
Target = tuple[uuid.UUID, WebhookEvent | None]


@dataclass
class ReplayItem:
    """One selected event and what happened (or would happen) to it."""

    event_id: str
    subject: str
    table: str | None = None
    status_before: str | None = None
    action: str = "replay"  # replay | skipped
    reason: str | None = None
    consumers: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    stream_seq: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


@dataclass
class ReplayReport:
    """The outcome of one replay command."""

    command_id: str
    dry_run: bool
    items: list[ReplayItem] = field(default_factory=list)
    scanned: int = 0

    @property
    def replayed(self) -> int:
        return sum(1 for i in self.items if i.action == "replay")

    @property
    def skipped(self) -> int:
        return sum(1 for i in self.items if i.action == "skipped")

    def progress_json(self, selected: int) -> dict[str, Any]:
        """The totals so far, without the items (what a running replay's row holds)."""
        return {
            "commandId": self.command_id,
            "dryRun": self.dry_run,
            "scanned": self.scanned,
            "selected": selected,
            "done": len(self.items),
            "replayed": 0 if self.dry_run else self.replayed,
            "wouldReplay": self.replayed if self.dry_run else None,
            "skipped": self.skipped,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "commandId": self.command_id,
            "dryRun": self.dry_run,
            "scanned": self.scanned,
            "selected": len(self.items),
            "done": len(self.items),
            "replayed": 0 if self.dry_run else self.replayed,
            "wouldReplay": self.replayed if self.dry_run else None,
            "skipped": self.skipped,
            "items": [i.as_json() for i in self.items],
        }


class Replayer:
    """Selects events for a replay command and re-delivers them."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, js: JetStreamContext, explain: Explainer | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.js = js
        self.explain = explain
        self.progress: ProgressReporter = SilentProgress()  # the CLI sets its bar or lines
        self.every = PROGRESS_EVERY

    async def run(self, command: ReplayRequested, on_progress: ProgressHook | None = None) -> ReplayReport:
        report = ReplayReport(str(command.command_id), command.dry_run)
        if command.event_ids:
            targets: list[Target] = [(i, None) for i in dict.fromkeys(command.event_ids)]
        else:
            targets = await self._scan(command, report)
        total = len(targets)
        if on_progress is not None:
            await on_progress(report, total)
        self.progress.start(total)
        try:
            for n, (event_id, event) in enumerate(targets, start=1):
                report.items.append(await self._one(command, event_id, event))
                self.progress.advance()
                if on_progress is not None and n % self.every == 0 and n < total:
                    await on_progress(report, total)
        finally:
            self.progress.stop()
        log.info(
            "replay_done",
            command_id=report.command_id,
            dry_run=command.dry_run,
            selected=len(report.items),
            replayed=report.replayed,
            skipped=report.skipped,
            requested_by=command.requested_by,
        )
        return report

    async def _one(self, command: ReplayRequested, event_id: uuid.UUID, scanned: WebhookEvent | None) -> ReplayItem:
        item = ReplayItem(str(event_id), scanned.subject if scanned else "")
        table_hint: TableName | None = command.event_table if command.event_ids else None
        async with self.engine.begin() as conn:
            try:
                table, row = await find_event(conn, event_id, table_hint, lock=not command.dry_run)
            except OperationError:
                if table_hint is not None:
                    try:
                        table, row = await find_event(conn, event_id, lock=not command.dry_run)
                    except OperationError:
                        return _skip(item, "event not found in PostgreSQL")
                else:
                    return _skip(item, "event not found in PostgreSQL (not recorded yet?)")
            item.table, item.status_before, item.stream_seq = table, row.status, row.stream_seq
            # the scan read the envelope already; by id, it is read from the stream (or the row)
            event = scanned if scanned is not None else await envelope_for(self.js, table, row)
            item.subject = event.subject
            item.consumers = expected_consumers(event.subject)
            if not item.consumers:
                return _skip(item, "no consumer takes this event type")
            if row.status == "quarantined" and not command.force:
                return _skip(item, "quarantined (replay with force to release it)")
            if row.status == "processing":
                return _skip(item, "being processed now")
            if command.dry_run:
                if self.explain is not None:
                    item.plan = await self.explain(event)
                return item
            await reset_for_replay(conn, event_id, table=table, force=command.force, by=command.requested_by)
        # published after the reset commits, so a consumer never sees the old state
        await publish_redrive(self.js, event, f"replay:{command.command_id}", self.settings.dfm_publish_timeout)
        return item

    async def _scan(self, command: ReplayRequested, report: ReplayReport) -> list[Target]:
        """Events on the stream matching the subject filter and range, with the envelope as
        accepted: first occurrence only (re-deliveries we published are copies and are
        passed over)."""
        assert command.subject is not None
        try:
            info = await self.js.stream_info(WEBHOOKS_STREAM)
        except NotFoundError:
            return []
        last = info.state.last_seq
        if command.to_seq:
            last = min(last, command.to_seq)
        if last == 0 or (command.from_seq and command.from_seq > last):
            return []
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0, deliver_policy=DeliverPolicy.ALL)
        if command.from_seq:
            config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, command.from_seq
        elif command.since:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = command.since  # nats-py sends it as RFC 3339 in UTC
        sub = await self.js.pull_subscribe(command.subject, stream=WEBHOOKS_STREAM, config=config)
        found: dict[uuid.UUID, WebhookEvent | None] = {}
        try:
            done = False
            while not done:
                try:
                    msgs = await sub.fetch(SCAN_BATCH, timeout=1.0)
                except TimeoutError:
                    break
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.stream > last or _after(meta.timestamp, command.until):
                        done = True
                        break
                    report.scanned += 1
                    done = meta.num_pending == 0 or meta.sequence.stream >= last
                    if (msg.headers or {}).get(HEADER_REDRIVE):
                        continue
                    try:
                        event = WebhookEvent.from_bytes(msg.data)
                    except (ValidationError, ValueError):
                        continue
                    found.setdefault(event.event_id, event)
        finally:
            await sub.unsubscribe()
        return list(found.items())


def _after(timestamp: datetime | None, until: datetime | None) -> bool:
    return bool(until and timestamp and timestamp > until)


def _skip(item: ReplayItem, reason: str) -> ReplayItem:
    item.action, item.reason = "skipped", reason
    return item
