"""A durable JetStream pull loop shared by every consumer service.

Binds to a durable created by ``ensure_topology``, fetches batches, hands them to the
service's handler and stops cleanly: on ``stop()`` it fetches nothing more, lets the batch
in hand finish (the handler acks), then drains the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contracts.streams import ConsumerSpec
from services.common.broker import connect, ensure_topology
from services.common.logging import get_logger
from services.common.settings import Settings

log = get_logger(__name__)

BatchHandler = Callable[[list[Msg]], Awaitable[None]]


class PullConsumer:
    """Runs ``handler`` over batches of the durable ``spec``."""

    def __init__(
        self,
        settings: Settings,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        batch: int = 100,
        fetch_timeout: float = 1.0,
    ) -> None:
        self._settings = settings
        self._spec = spec
        self._handler = handler
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._stopping = asyncio.Event()
        self._nc: NatsClient | None = None
        self.ready = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, make sure the topology exists, and consume until ``stop()``."""
        self._nc = await connect(self._settings, name=f"dfm-{self._spec.durable}")
        try:
            js = self._nc.jetstream()
            await ensure_topology(js, self._settings, consumers=(self._spec,))
            sub = await js.pull_subscribe_bind(self._spec.durable, stream=self._spec.stream)
            self.ready.set()
            log.info("consumer_started", consumer=self._spec.durable)
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(self._batch, timeout=self._fetch_timeout)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except nats.errors.Error as exc:
                    log.warning("fetch_failed", consumer=self._spec.durable, error=str(exc))
                    await asyncio.sleep(0.5)  # back off while the client reconnects
                    continue
                await self._handler(msgs)
        finally:
            # Acks of the last batch are flushed; an idle pull request needs no drain.
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self._nc.close()
            log.info("consumer_stopped", consumer=self._spec.durable)
