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
from nats.js.errors import Error as JsError
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.models import IngressOutbox
from services.common.logging import get_logger

log = get_logger(__name__)

NATS_ERRORS = (TimeoutError, asyncio.TimeoutError, nats.errors.Error, JsError, OSError)
DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError, asyncio.TimeoutError)


async def drain_outbox(engine: AsyncEngine, js: JetStreamContext, *, limit: int,
                       publish_timeout: float) -> int:
    """Publish up to ``limit`` outbox rows, oldest first; how many reached the stream.
    Stops at the first publish failure (the rest stay for the next drain)."""
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                select(IngressOutbox.id, IngressOutbox.subject, IngressOutbox.headers,
                       IngressOutbox.body)
                .where(IngressOutbox.published_at.is_(None))
                .order_by(IngressOutbox.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        done: list[Any] = []
        for row in rows:
            try:
                await js.publish(row.subject, row.body, headers=dict(row.headers),
                                 timeout=publish_timeout)
            except NATS_ERRORS as exc:
                log.warning("outbox_publish_failed", subject=row.subject, error=type(exc).__name__,
                            left=len(rows) - len(done))
                break
            done.append(row.id)
        if done:
            await conn.execute(
                update(IngressOutbox).where(IngressOutbox.id.in_(done)).values(published_at=func.now())
            )
    return len(done)


async def outbox_depth(engine: AsyncEngine) -> int:
    """Rows not yet on the stream."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(IngressOutbox).where(IngressOutbox.published_at.is_(None))
        )
    return int(count or 0)
