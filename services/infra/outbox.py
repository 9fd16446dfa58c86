"""Draining the ingress outbox to the stream (spec/inbound.md C7, sweep step S5).

Used by every ingress replica continuously and by the jobs sweep as a backstop. Rows are
claimed with ``FOR UPDATE SKIP LOCKED``, so concurrent drainers never publish a row twice
at once, and published with their original ``Nats-Msg-Id``: JetStream's duplicate window
drops an event that reached the stream before its ack was lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError
from nats.js.errors import Error as JsError
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.db.models import IngressOutboxRow
from services.infra.logging import get_logger

log = get_logger(__name__)

NATS_ERRORS = (TimeoutError, asyncio.TimeoutError, nats.errors.Error, JsError, OSError)
DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError, asyncio.TimeoutError)


# NATS unreachable or not ready: says nothing about the row, the drain stops and waits
CONNECTION_ERRORS = (
    TimeoutError,
    asyncio.TimeoutError,
    OSError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    ServiceUnavailableError,
    NoStreamResponseError,
)
# the server refuses this message for a reason of its own: retrying cannot help
ROW_ERRORS = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError, nats.errors.BadHeaderError, BadRequestError)
# a row that keeps failing otherwise while NATS is up is set aside after this many tries
MAX_ROW_ATTEMPTS = 5


async def drain_outbox(engine: AsyncEngine, js: JetStreamContext, *, limit: int, publish_timeout: float) -> int:
    """Publish up to ``limit`` outbox rows, fewest attempts first, then oldest; how many
    reached the stream.

    One row never blocks the others: a row the server refuses (too large, bad subject) is
    marked ``failed_at`` with its reason at once and the drain goes on; a row that fails
    otherwise while NATS answers gets ``attempts + 1``, which moves it behind the rows that
    never failed, and is marked failed once it has failed ``MAX_ROW_ATTEMPTS`` times. A
    connection-level failure (timeout, no connection, JetStream unavailable) stops this drain
    without counting against the row: NATS is down, the rest waits for the next drain.
    Failed rows are counted by ``outbox_failed`` and shown by the admin API and the alerts."""
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                select(
                    IngressOutboxRow.id,
                    IngressOutboxRow.subject,
                    IngressOutboxRow.headers,
                    IngressOutboxRow.body,
                    IngressOutboxRow.attempts,
                )
                .where(IngressOutboxRow.published_at.is_(None), IngressOutboxRow.failed_at.is_(None))
                .order_by(IngressOutboxRow.attempts, IngressOutboxRow.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        done: list[Any] = []
        for row in rows:
            try:
                await js.publish(row.subject, row.body, headers=dict(row.headers), timeout=publish_timeout)
            except CONNECTION_ERRORS as exc:
                log.warning(
                    "outbox_publish_failed", subject=row.subject, error=type(exc).__name__, left=len(rows) - len(done)
                )
                break
            except NATS_ERRORS as exc:
                attempts = row.attempts + 1
                failed = isinstance(exc, ROW_ERRORS) or attempts >= MAX_ROW_ATTEMPTS
                await conn.execute(
                    update(IngressOutboxRow)
                    .where(IngressOutboxRow.id == row.id)
                    .values(
                        attempts=attempts,
                        last_error=f"{type(exc).__name__}: {exc}"[:500],
                        failed_at=func.now() if failed else None,
                    )
                )
                log.error(
                    "outbox_row_failed" if failed else "outbox_row_publish_failed",
                    outbox_id=str(row.id),
                    subject=row.subject,
                    error=type(exc).__name__,
                    attempts=attempts,
                )
                continue
            done.append(row.id)
        if done:
            await conn.execute(
                update(IngressOutboxRow).where(IngressOutboxRow.id.in_(done)).values(published_at=func.now())
            )
    return len(done)


async def outbox_depth(engine: AsyncEngine) -> int:
    """Rows still to publish (failed rows excluded: ``outbox_failed`` counts those)."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(IngressOutboxRow)
            .where(IngressOutboxRow.published_at.is_(None), IngressOutboxRow.failed_at.is_(None))
        )
    return int(count or 0)


async def outbox_failed(engine: AsyncEngine) -> int:
    """Rows set aside because the stream refused them (spec/inbound.md §5.8)."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(IngressOutboxRow).where(IngressOutboxRow.failed_at.is_not(None))
        )
    return int(count or 0)
