"""The recorder: every accepted event gets its PostgreSQL row within seconds (spec §4.2).

Consumes ``webhooks.>`` in batches and inserts into ``webhook_events``,
``texting_webhook_events`` or ``broadcast_webhook_events`` with
``ON CONFLICT (dedupe_key) DO NOTHING`` — the permanent dedupe that outlives the stream's
duplicate window. Acks only after the transaction commits.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nats.aio.msg import Msg
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from services.common.events import row_for
from services.common.logging import get_logger

log = get_logger(__name__)
RETRY_DELAY_S = 2.0
RECORDED = Counter("dfm_recorder_events_total", "Events the recorder handled", ["result"])


class Recorder:
    """Batch handler writing event rows."""

    def __init__(self, engine: AsyncEngine, region: str = "US") -> None:
        self._engine = engine
        self._region = region
        self.recorded = 0
        self.duplicates = 0

    async def handle(self, msgs: list[Msg]) -> None:
        """Insert every parseable event of the batch in one transaction, then ack."""
        by_table: dict[type[Any], list[dict[str, Any]]] = defaultdict(list)
        good: list[Msg] = []
        for msg in msgs:
            try:
                event = WebhookEvent.from_bytes(msg.data)
            except (ValidationError, ValueError) as exc:
                log.error("malformed_event_terminated", subject=msg.subject,
                          error=str(exc).splitlines()[0])
                RECORDED.labels("malformed").inc()
                await msg.term()
                continue
            table, values = row_for(event, msg.metadata.sequence.stream, self._region)
            by_table[table].append(values)
            good.append(msg)
        if not good:
            return
        try:
            inserted = 0
            async with self._engine.begin() as conn:
                for table, rows in by_table.items():
                    stmt = (
                        insert(table).values(rows)
                        .on_conflict_do_nothing()  # dedupe key or id: a consumer may insert it now
                        .returning(table.id)
                    )
                    inserted += len((await conn.execute(stmt)).all())
        except SQLAlchemyError as exc:
            log.warning("record_failed_will_retry", error=type(exc).__name__, batch=len(good))
            for msg in good:
                await msg.nak(delay=RETRY_DELAY_S)
            return
        self.recorded += inserted
        self.duplicates += len(good) - inserted
        RECORDED.labels("recorded").inc(inserted)
        RECORDED.labels("duplicate").inc(len(good) - inserted)
        if len(good) > inserted:
            log.info("duplicates_beyond_stream_window", count=len(good) - inserted)
        for msg in good:
            await msg.ack()
