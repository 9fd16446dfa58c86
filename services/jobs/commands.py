"""Command delivery on the durable ``jobs``: which model each subject of the JOBS stream
carries, and how one command message is settled (STYLE.md §4).

The messages come from the FastStream front every consumer shares
(``services/infra/stream_app.py``). They are commands, not webhook events: no event row, no
``event_deliveries`` ledger, so ``services.infra.delivery.EventConsumer`` does not take them;
each command records its own run (``reconcile_runs``). What is shared is the settling: a
command that ends is acked; ``RetryLater`` is a NAK with its delay (the durable's back-off
when it has none); ``Permanent`` terminates (JetStream's advisory leaves a ``dead_letters``
row); any other failure is a NAK on the back-off, until ``max_deliver``. While a command
runs the message is kept in progress (+WPI), so a long replay is not redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from contracts.commands import (
    AgentsSeedRequested,
    AlertCheckRequested,
    ListsRebuildRequested,
    PurgeRequested,
    ReconcileRequested,
    ReplayRequested,
    SweepRequested,
)
from contracts.streams import JOBS_CONSUMER
from contracts.subjects import (
    AGENTS_SEED_SUBJECT,
    ALERTS_SUBJECT,
    LISTS_REBUILD_SUBJECT,
    PURGE_SUBJECT,
    RECONCILE_SUBJECT,
    REPLAY_SUBJECT,
    SWEEP_SUBJECT,
)
from services.infra.delivery import heartbeat_interval
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger

__all__ = ["COMMANDS", "RunCommand", "deliver_command"]

log = get_logger(__name__)

COMMANDS: dict[str, type[BaseModel]] = {
    SWEEP_SUBJECT: SweepRequested,
    REPLAY_SUBJECT: ReplayRequested,
    RECONCILE_SUBJECT: ReconcileRequested,
    ALERTS_SUBJECT: AlertCheckRequested,
    PURGE_SUBJECT: PurgeRequested,
    AGENTS_SEED_SUBJECT: AgentsSeedRequested,
    LISTS_REBUILD_SUBJECT: ListsRebuildRequested,
}

RunCommand = Callable[[BaseModel], Awaitable[Any]]


async def deliver_command(msg: Msg, run: RunCommand) -> None:
    """One command message: parse it by its subject, ``run`` it, settle it."""
    model = COMMANDS.get(msg.subject)
    if model is None:
        log.error("unknown_command_terminated", subject=msg.subject)
        await msg.term()
        return
    try:
        command = model.model_validate_json(msg.data)
    except (ValidationError, ValueError) as exc:
        log.error("malformed_command_terminated", subject=msg.subject, error=str(exc).splitlines()[0])
        await msg.term()
        return
    bound = {"subject": msg.subject, "command_id": str(getattr(command, "command_id", ""))}
    try:
        async with _in_progress(msg):
            await run(command)
    except RetryLater as exc:
        log.warning("command_retry", reason=exc.reason, delay_s=exc.delay, **bound)
        await (msg.nak(delay=exc.delay) if exc.delay is not None else msg.nak())
    except Permanent as exc:
        log.warning("command_refused_terminated", reason=exc.reason, **bound)
        await msg.term()
    except Exception:  # a bug or an outage: retried on the durable's back-off, then a dead letter
        log.exception("command_failed", **bound)
        await msg.nak()
    else:
        await msg.ack()


@contextlib.asynccontextmanager
async def _in_progress(msg: Msg) -> AsyncIterator[None]:
    """+WPI three times per AckWait while the command runs (a lost beat is not fatal). With a
    BackOff list the server redelivers after its first step (30 s), not AckWait: beat to that."""
    interval = heartbeat_interval(min((JOBS_CONSUMER.ack_wait_s, *JOBS_CONSUMER.backoff_s)))

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - tried again on the next tick
                log.warning("command_heartbeat_failed", subject=msg.subject, error=type(exc).__name__)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
