"""The recorder's front: FastStream's batch pull subscriber on a durable, the whole batch
handed over as a list (the recorder writes it with one INSERT per table, then settles each
message itself: ack after the commit, term for a poison row, nak with delay while the
database is away).

``PullSub(batch=True)`` does what the recorder needs: it binds to the durable the topology
step made (``JStream(declare=False)``, the durable's own identity and inbox prefix), gives
the handler the raw ``nats.aio.msg.Msg`` list (``AckPolicy.MANUAL``: FastStream settles
nothing, so per-message settling after the batch insert stays the recorder's), keeps
fetching until ``batch`` messages or ``fetch_timeout`` seconds (the window must stay well
under the durable's AckWait), and on ``stop()`` fetches nothing more, lets the batch in hand
finish (up to ``DFM_DRAIN_TIMEOUT_S``) and drops what it fetched but had not handed over yet,
which JetStream redelivers after the AckWait. A handler that raises is logged by FastStream
and its unsettled messages are redelivered the same way.

One library race is closed here: nats-py's ``fetch`` can time out with a bare ``TimeoutError``
that FastStream's batch loop does not catch, which dropped the batch gathered in that window
until the AckWait (``stream_app.fetch_timeouts_as_nats``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from faststream import AckPolicy, Context
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from nats.aio.msg import Msg

from contracts.streams import ConsumerSpec
from services.infra.broker import prepare_topology
from services.infra.logging import get_logger
from services.infra.metrics_server import NATS_TIMEOUT_S, PROCESS_HEALTH, FetchLoop
from services.infra.nats_auth import inbox_prefix
from services.infra.settings import Settings
from services.infra.stream_app import durable_broker, fetch_timeouts_as_nats

log = get_logger(__name__)

BatchHandler = Callable[[list[Msg]], Awaitable[None]]


def batch_broker(
    settings: Settings,
    spec: ConsumerSpec,
    handler: BatchHandler,
    *,
    batch: int,
    fetch_timeout: float,
    progress: FetchLoop | None = None,
) -> NatsBroker:
    """A broker whose single batch subscriber feeds ``handler`` from the durable ``spec``;
    every batch is recorded in ``progress`` (one slot: the loop fetches nothing while the
    handler runs)."""
    broker = durable_broker(settings, spec)
    progress = progress or FetchLoop(spec.durable, 1)

    @broker.subscriber(
        spec.filter_subjects[0],
        stream=JStream(spec.stream, declare=False),
        durable=spec.durable,
        pull_sub=PullSub(batch_size=batch, timeout=fetch_timeout, batch=True),
        ack_policy=AckPolicy.MANUAL,
        inbox_prefix=f"{inbox_prefix(spec.owner)}.".encode(),
    )
    async def on_batch(message: Annotated[NatsBatchMessage, Context("message")]) -> None:
        with progress.handling():
            await handler(message.raw_message)

    return broker


class PullConsumer:
    """Runs ``handler`` over batches of up to ``batch`` messages of the durable ``spec``."""

    def __init__(
        self,
        settings: Settings,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        batch: int = 1,
        fetch_timeout: float = 5.0,
    ) -> None:
        self._settings = settings
        self._spec = spec
        self._handler = handler
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()

    def stop(self) -> None:
        """Ask the consumer to finish the batch in hand and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Make sure the durable exists (a service only checks; the topology step creates it),
        then consume until ``stop()``."""
        await prepare_topology(self._settings, durables=(self._spec,))
        progress = FetchLoop(self._spec.durable, 1)
        broker = batch_broker(
            self._settings,
            self._spec,
            self._handler,
            batch=self._batch,
            fetch_timeout=self._fetch_timeout,
            progress=progress,
        )
        await broker.start()
        # tests/integration/test_batch_fetch_timeout.py forces the race this closes
        if not fetch_timeouts_as_nats(broker):
            raise RuntimeError(f"{self._spec.durable}: no pull subscription to guard (FastStream changed?)")
        PROCESS_HEALTH.watch(self._settings, progress, lambda: broker.ping(NATS_TIMEOUT_S))
        try:
            self.ready.set()
            log.info("consumer_started", consumer=self._spec.durable, batch=self._batch)
            await self._stopping.wait()
        finally:
            progress.drain()  # not ready while the batch in hand finishes
            await broker.stop()
            PROCESS_HEALTH.forget(progress)
            log.info("consumer_stopped", consumer=self._spec.durable)
