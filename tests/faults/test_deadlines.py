"""Nothing waits forever (issue #14 item 5, security-audit F2/F5/F11): database statements and
lock waits are bounded by PostgreSQL timeouts, a rule by its deadline; the heartbeat keeps a
healthy rule's message alive through a NATS blip but not a stuck one's past the deadline; and a
delivery whose claim is live is not run a second time.

The consumer runner is driven the way FastStream drives it: real JetStream messages fetched
from the ``ghl-sync`` durable and handed to ``EventConsumer.handle``; the rules are small test
rules, because the delivery mechanics are what is under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.streams import GHL_SYNC_BULK
from services.domain.store import contact_lock
from services.infra.broker import prepare_topology
from services.infra.db.session import create_engine, sync_url
from services.infra.delivery import EventConsumer, Outcome, Rule
from services.infra.redrive import publish_redrive
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats
from tests.support.jobs import probe_event
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import eventually

FAST = {"retry_base_delay_s": 0.2, "retry_max_delay_s": 1.0}


@dataclass
class Rig:
    nc: Client
    js: JetStreamContext
    sub: Any
    consumer: EventConsumer
    engine: AsyncEngine

    async def next_message(self, timeout: float = 10) -> Msg:
        [msg] = await self.sub.fetch(1, timeout=timeout)
        return msg

    async def messages(self, count: int) -> list[Msg]:
        got: list[Msg] = []
        async with asyncio.timeout(10):
            while len(got) < count:
                got += await self.sub.fetch(count - len(got), timeout=10)
        return got


@asynccontextmanager
async def consumer_rig(settings: Settings, rule: Rule, **connect: Any) -> AsyncIterator[Rig]:
    """The ``ghl-sync`` durable as the services configure it, ``rule`` behind the real runner,
    and a NATS connection (options ``connect``) that fetches its messages."""
    await prepare_topology(settings)
    engine = create_engine(settings)
    nc = await nats.connect(**{"servers": settings.nats_url, **connect})
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe_bind(GHL_SYNC_BULK.durable, stream=GHL_SYNC_BULK.stream)  # contact events: bulk
        yield Rig(nc, js, sub, EventConsumer(settings, GHL_SYNC_BULK, engine, rule), engine)
    finally:
        await nc.close()
        await engine.dispose()


async def publish(js: JetStreamContext, event: WebhookEvent) -> None:
    await js.publish(event.subject, event.to_bytes(), headers=event.nats_headers())


async def delivery(db: str, event: WebhookEvent) -> dict[str, Any]:
    [row] = await fetch(
        db, "SELECT * FROM event_deliveries WHERE event_id = $1 AND consumer = $2", event.event_id, GHL_SYNC_BULK.owner
    )
    return row


@dataclass
class HeldRule:
    """A rule that runs until the test lets it finish; records every call."""

    calls: list[int] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, event: WebhookEvent, attempt: int) -> Outcome:
        self.calls.append(attempt)
        self.entered.set()
        await self.release.wait()
        return Outcome("applied")


def heartbeat_failures() -> float:
    return REGISTRY.get_sample_value("dfm_heartbeat_failures_total", {"consumer": GHL_SYNC_BULK.owner}) or 0.0


# --- database timeouts ------------------------------------------------------------------------
async def test_a_lock_held_longer_than_lock_timeout_fails_the_waiting_statement(
    settings: Settings, clean_db: str
) -> None:
    bounded = settings.model_copy(update={"db_lock_timeout_ms": 300, "db_statement_timeout_ms": 20_000})
    engine = create_engine(bounded)
    holder = await asyncpg.connect(sync_url(clean_db))  # another session that keeps its locks
    try:
        await holder.execute("INSERT INTO sync_state (direction, entity_type) VALUES ('x', 'y')")
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT * FROM sync_state FOR UPDATE")
        await holder.execute("SELECT pg_advisory_lock(hashtext('contact:+15555550100'))")
        async with asyncio.timeout(10):  # without lock_timeout both waits below never end
            async with engine.connect() as conn:
                with pytest.raises(DBAPIError) as row_wait:
                    await conn.execute(text("UPDATE sync_state SET cursor_id = 'z'"))
            with pytest.raises(DBAPIError) as contact_wait:
                async with contact_lock(engine, "+15555550100"):
                    pass
        for failure in (row_wait, contact_wait):
            assert isinstance(failure.value.orig, Exception)
            assert getattr(failure.value.orig, "sqlstate", None) == "55P03"  # lock_not_available
        await tx.rollback()
    finally:
        await holder.close()
        await engine.dispose()


async def test_every_engine_connection_carries_the_configured_timeouts(settings: Settings) -> None:
    configured = settings.model_copy(
        update={
            "db_statement_timeout_ms": 45_000,
            "db_lock_timeout_ms": 7_000,
            "db_idle_in_transaction_timeout_ms": 90_000,
        }
    )
    impatient = settings.model_copy(update={"db_statement_timeout_ms": 200})
    engines = [create_engine(configured), create_engine(impatient)]
    try:
        async with engines[0].connect() as conn:
            shown = {
                name: (await conn.execute(text(f"SHOW {name}"))).scalar_one()
                for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
            }
        assert shown == {"statement_timeout": "45s", "lock_timeout": "7s", "idle_in_transaction_session_timeout": "90s"}
        async with asyncio.timeout(10), engines[1].connect() as conn:
            with pytest.raises(DBAPIError) as slow:
                await conn.execute(text("SELECT pg_sleep(30)"))
        assert getattr(slow.value.orig, "sqlstate", None) == "57014"  # query_canceled
    finally:
        for engine in engines:
            await engine.dispose()


# --- rule deadline and heartbeat ---------------------------------------------------------------
async def test_a_rule_stuck_past_its_deadline_ends_as_a_retry_with_a_deadline_reason(
    settings: Settings, clean_db: str
) -> None:
    bounded = settings.model_copy(update={"dfm_rule_deadline_s": 1.0, "dfm_consumer_ack_wait_s": 2.0, **FAST})
    stuck = HeldRule()  # never released: a vendor call that never answers
    event = probe_event(1401)
    async with consumer_rig(bounded, stuck) as rig:
        await publish(rig.js, event)
        first = await rig.next_message()
        async with asyncio.timeout(10):  # without a deadline this never returns
            await rig.consumer.handle(first)
        row = await delivery(clean_db, event)
        assert row["status"] == "error" and "deadline" in row["last_error"]
        [attempt] = await fetch(clean_db, "SELECT * FROM event_attempts WHERE event_id = $1", event.event_id)
        assert attempt["status"] == "error" and "deadline" in attempt["detail"]
        again = await rig.next_message()  # NAKed with the back-off: tried again, not lost
        assert again.metadata.num_delivered == 2
        stuck.release.set()
        await rig.consumer.handle(again)
        assert stuck.calls == [1, 2]
        assert (await delivery(clean_db, event))["status"] == "done"


async def test_the_heartbeat_stops_at_the_deadline_when_a_rule_ignores_cancellation(
    settings: Settings, clean_db: str
) -> None:
    bounded = settings.model_copy(update={"dfm_rule_deadline_s": 1.0, "dfm_consumer_ack_wait_s": 1.5, **FAST})
    leave = asyncio.Event()

    async def stubborn(event: WebhookEvent, attempt: int) -> Outcome:
        while not leave.is_set():  # e.g. a blocking wait that swallows CancelledError
            try:
                await leave.wait()
            except asyncio.CancelledError:
                continue
        return Outcome("skipped", "left")

    event = probe_event(1402)
    async with consumer_rig(bounded, stubborn) as rig:
        await publish(rig.js, event)
        running = asyncio.create_task(rig.consumer.handle(await rig.next_message()))
        try:
            # a heartbeat past the deadline would keep this message in progress for ever
            redelivered = await rig.next_message(timeout=15)
            assert redelivered.metadata.num_delivered == 2
        finally:
            leave.set()
            async with asyncio.timeout(10):
                await running


class CuttableLink:
    """A TCP relay on loopback between a client and the NATS server that the test can cut:
    the client loses its connection (a network blip) while the server, and JetStream's
    AckWait timers, carry on as they would."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("nats://").rpartition(":")
        self._upstream = (host, int(port))
        self._open: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self._cut = True
        for writer in self._open:
            writer.close()
        self._open.clear()

    def restore(self) -> None:
        self._cut = False

    async def aclose(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_transient_heartbeat_error_does_not_stop_the_heartbeat(
    settings: Settings, clean_db: str, nats_server: EmbeddedNats
) -> None:
    link = CuttableLink(nats_server.url)
    proxied = await link.start()
    ack_wait = 6.0  # heartbeats every 2 s: a blip between two of them is not a redelivery
    bounded = settings.model_copy(update={"dfm_rule_deadline_s": 60.0, "dfm_consumer_ack_wait_s": ack_wait, **FAST})
    held = HeldRule()
    event = probe_event(1403)
    try:
        async with consumer_rig(
            bounded,
            held,
            servers=[proxied],
            pending_size=0,  # no buffering:
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        ) as rig:  # +WPI fails
            await publish(rig.js, event)
            running = asyncio.create_task(rig.consumer.handle(await rig.next_message()))
            await asyncio.wait_for(held.entered.wait(), 10)
            failures = heartbeat_failures()
            link.cut()  # the consumer's NATS connection drops while the rule runs

            async def heartbeat_failed() -> bool:
                return heartbeat_failures() > failures

            await eventually(heartbeat_failed, timeout=10)
            link.restore()

            async def reconnected() -> bool:
                return rig.nc.is_connected

            await eventually(reconnected, timeout=10)
            # the heartbeat carries on: no redelivery for 1.5 AckWaits while the rule still runs
            with pytest.raises(nats.errors.TimeoutError):
                await rig.next_message(timeout=1.5 * ack_wait)
            held.release.set()
            async with asyncio.timeout(10):
                await running
        assert held.calls == [1]
        assert (await delivery(clean_db, event))["status"] == "done"
    finally:
        await link.aclose()


# --- one claim at a time -----------------------------------------------------------------------
async def test_two_deliveries_of_one_event_at_once_run_the_rule_once(settings: Settings, clean_db: str) -> None:
    bounded = settings.model_copy(update={"dfm_consumer_ack_wait_s": 2.0, **FAST})
    held = HeldRule()
    event = probe_event(1404)
    async with consumer_rig(bounded, held) as rig:
        await publish(rig.js, event)
        await publish_redrive(rig.js, event, "sweep:test", 2.0)  # S1 re-drive of a lagging event
        first, second = await rig.messages(2)
        running = asyncio.create_task(rig.consumer.handle(first))
        await asyncio.wait_for(held.entered.wait(), 10)
        async with asyncio.timeout(10):
            await rig.consumer.handle(second)  # the claim is live: left for later, not run
        assert held.calls == [1]
        held.release.set()
        async with asyncio.timeout(10):
            await running
        back = await rig.next_message()  # NAKed, not acked: it would have run had the first died
        assert back.headers and back.headers.get("Dfm-Redrive") == "sweep:test"
        await rig.consumer.handle(back)  # the delivery is done now: acked without running
        with pytest.raises(nats.errors.TimeoutError):
            await rig.next_message(timeout=3)
    assert held.calls == [1]
    row = await delivery(clean_db, event)
    assert (row["status"], row["attempts"]) == ("done", 1)
