"""Durable before 2xx (spec/inbound.md C7): JetStream PubAck, else the PostgreSQL outbox.

The outbox is drained back to the stream by every ingress replica (``FOR UPDATE SKIP
LOCKED``), with the original ``Nats-Msg-Id`` so JetStream's duplicate window drops an event
that did reach the stream before the ack was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from uuid import UUID

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import HEADER_EVENT_ID, WebhookEvent
from contracts.streams import STREAMS, WEBHOOKS_STREAM
from services.infra import tracing
from services.infra.broker import connect, ensure_stream
from services.infra.db.models import IngressOutboxRow
from services.infra.logging import get_logger
from services.infra.outbox import DB_ERRORS, NATS_ERRORS, drain_outbox, outbox_depth, outbox_failed
from services.infra.settings import Settings
from services.ingress import metrics

log = get_logger(__name__)

DRAIN_BATCH = 500


@dataclass(frozen=True)
class Accepted:
    """On the stream (``seq``) or in the outbox (``seq`` None)."""

    seq: int | None


@dataclass(frozen=True)
class Duplicate:
    """Already accepted earlier; ``first_id`` when it could be read back."""

    first_id: UUID | None


@dataclass(frozen=True)
class Unavailable:
    """Neither NATS nor PostgreSQL could take the event."""

    reason: str


@dataclass(frozen=True)
class TooLarge:
    """The encoded message would exceed the server's ``max_payload``: answered 413, never
    published nor put in the outbox (where it would wait for a publish that cannot succeed)."""

    size: int
    limit: int


PublishResult = Accepted | Duplicate | Unavailable | TooLarge


def message_size(body: bytes, headers: dict[str, str]) -> int:
    """Bytes NATS counts against ``max_payload``: the body plus the encoded header block
    (``NATS/1.0\r\n``, one ``key: value\r\n`` line each, a closing ``\r\n``)."""
    header_bytes = 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return len(body) + header_bytes


class EventPublisher:
    """Publishes accepted events; owns the NATS connection and the outbox drainer."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self._settings = settings
        self._engine = engine
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        # the last max_payload a server announced; the setting until one has
        self._max_payload = settings.dfm_nats_max_payload

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect in the background (the ingress serves from the outbox meanwhile)."""
        self._tasks.append(asyncio.create_task(self._connect_forever(), name="nats-connect"))
        self._tasks.append(asyncio.create_task(self._drain_forever(), name="outbox-drain"))

    async def close(self) -> None:
        """Stop background work, flush and close the NATS connection."""
        self._closing.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(*NATS_ERRORS):
                await self._nc.drain()

    async def _connect_forever(self) -> None:
        delay = 0.2
        while not self._closing.is_set():
            try:
                self._nc = await connect(self._settings, name="dfm-ingress")
                self._js = self._nc.jetstream(timeout=self._settings.dfm_publish_timeout)
                self._max_payload = self._nc.max_payload
                for spec in STREAMS:
                    await ensure_stream(self._js, spec, self._settings)
                log.info("nats_connected", servers=self._settings.nats_url)
                return
            except NATS_ERRORS as exc:
                log.warning("nats_connect_failed", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @property
    def nats_connected(self) -> bool:
        """True while the NATS connection is up."""
        return self._nc is not None and self._nc.is_connected

    async def stream_present(self) -> bool:
        """True when the WEBHOOKS stream answers."""
        if self._js is None or not self.nats_connected:
            return False
        try:
            await self._js.stream_info(WEBHOOKS_STREAM)
        except NATS_ERRORS:
            return False
        return True

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (header block included)."""
        if self._nc is not None and self._nc.is_connected:
            self._max_payload = self._nc.max_payload
        return self._max_payload

    # --- publishing ------------------------------------------------------------------------
    async def publish(self, event: WebhookEvent) -> PublishResult:
        """Make ``event`` durable; never raises for infrastructure trouble."""
        body = event.to_bytes()
        headers = tracing.inject(event.nats_headers())  # kept in the outbox row too
        size, limit = message_size(body, headers), self.max_payload
        if size > limit:
            return TooLarge(size, limit)
        started = time.perf_counter()
        try:
            if self._js is not None and self.nats_connected:
                try:
                    ack = await self._js.publish(
                        event.subject,
                        body,
                        headers=headers,
                        timeout=self._settings.dfm_publish_timeout,
                    )
                except NATS_ERRORS as exc:
                    log.warning(
                        "publish_failed_using_outbox",
                        event_id=str(event.event_id),
                        error=type(exc).__name__,
                    )
                else:
                    if ack.duplicate:
                        return Duplicate(await self._first_id(ack.seq))
                    return Accepted(ack.seq)
            return await self._to_outbox(event.subject, event.dedupe_key, headers, body)
        finally:
            metrics.PUBLISH_DURATION.observe(time.perf_counter() - started)

    async def publish_command(self, subject: str, body: bytes, msg_id: str) -> bool:
        """Put an operator command on the JOBS stream; False when NATS cannot take it now."""
        if self._js is None or not self.nats_connected:
            return False
        try:
            await self._js.publish(
                subject, body, headers={"Nats-Msg-Id": msg_id}, timeout=self._settings.dfm_publish_timeout
            )
        except NATS_ERRORS as exc:
            log.warning("command_publish_failed", subject=subject, error=type(exc).__name__)
            return False
        return True

    async def _first_id(self, seq: int) -> UUID | None:
        """Event id of the first acceptance, read back from the stream (best effort)."""
        if self._js is None:
            return None
        try:
            msg = await self._js.get_msg(WEBHOOKS_STREAM, seq)
        except NATS_ERRORS:
            return None
        value = (msg.headers or {}).get(HEADER_EVENT_ID)
        try:
            return UUID(value) if value else None
        except ValueError:
            return None

    async def _to_outbox(self, subject: str, dedupe_key: str, headers: dict[str, str], body: bytes) -> PublishResult:
        stmt = (
            insert(IngressOutboxRow)
            .values(subject=subject, dedupe_key=dedupe_key, headers=headers, body=body)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(IngressOutboxRow.id)
        )
        try:
            async with asyncio.timeout(self._settings.dfm_publish_timeout * 2):
                async with self._engine.begin() as conn:
                    inserted = (await conn.execute(stmt)).scalar_one_or_none()
        except DB_ERRORS as exc:
            log.error("event_not_durable", dedupe_key=dedupe_key, error=type(exc).__name__)
            return Unavailable(type(exc).__name__)
        if inserted is None:
            return Duplicate(None)
        metrics.OUTBOX_WRITES.inc()
        return Accepted(None)

    # --- outbox drain ----------------------------------------------------------------------
    async def drain_outbox_once(self) -> int:
        """Publish up to one batch of outbox rows; returns how many reached the stream."""
        if self._js is None or not self.nats_connected:
            return 0
        return await drain_outbox(
            self._engine, self._js, limit=DRAIN_BATCH, publish_timeout=self._settings.dfm_publish_timeout
        )

    async def outbox_depth(self) -> int:
        """Rows not yet on the stream."""
        return await outbox_depth(self._engine)

    async def _drain_forever(self) -> None:
        while not self._closing.is_set():
            try:
                moved = await self.drain_outbox_once()
                if moved:
                    log.info("outbox_drained", published=moved)
                metrics.OUTBOX_DEPTH.set(await self.outbox_depth())
                metrics.OUTBOX_FAILED.set(await outbox_failed(self._engine))
            except DB_ERRORS as exc:
                log.warning("outbox_drain_failed", error=type(exc).__name__)
                moved = 0
            if moved < DRAIN_BATCH:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), timeout=1.0)
