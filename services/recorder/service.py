"""The recorder: every accepted event gets its PostgreSQL row within seconds (spec §4.2).

Consumes ``webhooks.>`` in batches (FastStream's batch pull subscriber,
services/infra/consumer.py) and inserts into ``webhook_events``,
``texting_webhook_events`` or ``broadcast_webhook_events`` with
``ON CONFLICT (dedupe_key) DO NOTHING`` — the permanent dedupe that outlives the stream's
duplicate window. Acks only after the transaction commits.

A batch is one transaction, so one row PostgreSQL refuses (a U+0000 in the payload, a dedupe
key over the btree row limit) would fail all of it on every delivery until ``max_deliver``
and take its batch-mates with it (ARCHITECTURE.md invariant 4). When the refusal is about the
data, the batch is written again message by message: the good ones are recorded, each bad one
gets a ``dead_letters`` row saying why and is terminated. The ingress refuses such bodies
before publishing; this is the defence for messages that reach the stream by other means.
A database that is away is not the data's fault: then the whole batch is NAKed and waits.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.streams import RECORDER as RECORDER_SPEC
from services.infra.db.errors import driver_error
from services.infra.db.models import DeadLetterRow
from services.infra.events import row_for
from services.infra.logging import get_logger

log = get_logger(__name__)
RETRY_DELAY_S = 2.0
RECORDED = Counter("dfm_recorder_events_total", "Events the recorder handled", ["result"])
# PostgreSQL refusing the values of a row, not the database being unavailable: class 22 (data
# exception: untranslatable character, invalid text representation, …), class 23 (a
# constraint the row breaks) and class 54 (program limit exceeded: index row size).
ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
)
# What a database that is away or restarting raises: SQLAlchemy's wrapper of a driver error,
# or the socket's own error when asyncpg cannot connect at all (not wrapped by SQLAlchemy).
DB_ERRORS = (SQLAlchemyError, OSError)


@dataclass(frozen=True)
class _Pending:
    """A parsed message and the row recording it."""

    msg: Msg
    event: WebhookEvent
    table: type[Any]
    values: dict[str, Any]


def unstorable(exc: BaseException) -> BaseException | None:
    """The driver error saying PostgreSQL refused the row's values, else None (transient)."""
    return driver_error(exc, ROW_ERRORS)


class Recorder:
    """Batch handler writing event rows."""

    def __init__(self, engine: AsyncEngine, region: str = "US") -> None:
        self._engine = engine
        self._region = region
        self.recorded = 0
        self.duplicates = 0
        self.dead_lettered = 0

    async def handle(self, msgs: list[Msg]) -> None:
        """Insert every parseable event of the batch in one transaction, then ack."""
        pending: list[_Pending] = []
        for msg in msgs:
            try:
                event = WebhookEvent.from_bytes(msg.data)
            except (ValidationError, ValueError) as exc:
                log.error("malformed_event_terminated", subject=msg.subject, error=str(exc).splitlines()[0])
                RECORDED.labels("malformed").inc()
                await msg.term()
                continue
            table, values = row_for(event, msg.metadata.sequence.stream, self._region)
            pending.append(_Pending(msg, event, table, values))
        if not pending:
            return
        try:
            inserted = await self._insert(pending)
        except DB_ERRORS as exc:
            if unstorable(exc) is None:
                await self._nak(pending, exc)
                return
            log.warning("batch_has_unstorable_row_isolating", batch=len(pending))
            await self._one_by_one(pending)
            return
        await self._settled(pending, inserted)

    async def _insert(self, pending: list[_Pending]) -> int:
        """One transaction for the rows of ``pending``; the number actually inserted."""
        by_table: dict[type[Any], list[dict[str, Any]]] = defaultdict(list)
        for item in pending:
            by_table[item.table].append(item.values)
        inserted = 0
        async with self._engine.begin() as conn:
            for table, rows in by_table.items():
                stmt = (
                    insert(table)
                    .values(rows)
                    .on_conflict_do_nothing()  # dedupe key or id: a consumer may insert it now
                    .returning(table.id)
                )
                inserted += len((await conn.execute(stmt)).all())
        return inserted

    async def _one_by_one(self, pending: list[_Pending]) -> None:
        """Each message in its own transaction: a refused row is dead-lettered and terminated,
        the rest recorded. A transient error on the way NAKs what is left, as for a batch."""
        for n, item in enumerate(pending):
            try:
                inserted = await self._insert([item])
            except DB_ERRORS as exc:
                cause = unstorable(exc)
                if cause is None:
                    await self._nak(pending[n:], exc)
                    return
                try:
                    await self._dead_letter(item, cause)
                except DB_ERRORS as dl_exc:
                    if unstorable(dl_exc) is None:  # the reason must be kept: retry it later
                        await self._nak(pending[n:], dl_exc)
                        return
                    log.error(
                        "dead_letter_unstorable",
                        stream_seq=item.msg.metadata.sequence.stream,
                        error=type(dl_exc).__name__,
                    )
                await item.msg.term()
                continue
            await self._settled([item], inserted)

    async def _dead_letter(self, item: _Pending, cause: BaseException) -> None:
        """The ``dead_letters`` row of a message whose event row PostgreSQL refuses. The reason
        names the error type and SQLSTATE only: PostgreSQL's message can quote the value."""
        meta = item.msg.metadata
        sqlstate = getattr(cause, "sqlstate", None) or "?"
        reason = (
            f"recorder cannot store the event: {type(cause).__name__} "
            f"(SQLSTATE {sqlstate}) in {item.table.__tablename__}"
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(DeadLetterRow)
                .values(
                    stream=meta.stream,
                    consumer=meta.consumer or RECORDER_SPEC.durable,
                    stream_seq=meta.sequence.stream,
                    subject=item.msg.subject,
                    event_id=item.event.event_id,
                    kind="terminated",
                    deliveries=meta.num_delivered,
                    reason=reason,
                )
                # a redelivery (term lost) or the jobs advisory listener may have written it
                .on_conflict_do_nothing(index_elements=["stream", "consumer", "stream_seq"])
            )
        self.dead_lettered += 1
        RECORDED.labels("unstorable").inc()
        log.error(
            "unstorable_event_dead_lettered",
            event_id=str(item.event.event_id),
            stream_seq=meta.sequence.stream,
            error=type(cause).__name__,
            sqlstate=sqlstate,
        )

    async def _nak(self, pending: list[_Pending], exc: BaseException) -> None:
        log.warning("record_failed_will_retry", error=type(exc).__name__, batch=len(pending))
        for item in pending:
            await item.msg.nak(delay=RETRY_DELAY_S)

    async def _settled(self, pending: list[_Pending], inserted: int) -> None:
        self.recorded += inserted
        self.duplicates += len(pending) - inserted
        RECORDED.labels("recorded").inc(inserted)
        RECORDED.labels("duplicate").inc(len(pending) - inserted)
        if len(pending) > inserted:
            log.info("duplicates_beyond_stream_window", count=len(pending) - inserted)
        for item in pending:
            await item.msg.ack()
