"""A batching JetStream pull loop, used by the recorder (whole batches go into one INSERT).

The sync consumers run under FastStream (``services/infra/stream_app.py``); this loop
stays for the recorder, which needs the batch as a list. It binds to a durable created by
``ensure_topology`` and runs ``workers`` fetch loops, each fetching up to ``batch``
messages and handing them to the handler. Long fetch
timeouts matter: nats-py lets a pull request expire 0.1 ms before the client stops
waiting, and a message the server sends into that gap is only redelivered after the
ack wait, so short polls would delay messages by seconds. On ``stop()`` no new fetch
starts, a fetch in progress is abandoned, and the messages in hand finish (the handler
acks them) before the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contracts.streams import ConsumerSpec
from services.infra.broker import connect, ensure_topology
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)

BatchHandler = Callable[[list[Msg]], Awaitable[None]]


class PullConsumer:
    """Runs ``handler`` over messages of the durable ``spec``."""

    def __init__(
        self,
        settings: Settings,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        batch: int = 1,
        workers: int = 1,
        fetch_timeout: float = 5.0,
    ) -> None:
        self._settings = settings
        self._spec = spec
        self._handler = handler
        self._batch = batch
        self._workers = workers
        self._fetch_timeout = fetch_timeout
        self._stopping = asyncio.Event()
        self._nc: NatsClient | None = None
        self.ready = asyncio.Event()

    def stop(self) -> None:
        """Ask the loops to finish the messages in hand and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, make sure the topology exists, and consume until ``stop()``."""
        self._nc = await connect(self._settings, name=f"dfm-{self._spec.durable}")
        try:
            js = self._nc.jetstream()
            await ensure_topology(js, self._settings, consumers=(self._spec,))
            sub = await js.pull_subscribe_bind(self._spec.durable, stream=self._spec.stream)
            self.ready.set()
            log.info("consumer_started", consumer=self._spec.durable, workers=self._workers)
            await asyncio.gather(*(self._work(sub) for _ in range(self._workers)))
        finally:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self._nc.close()
            log.info("consumer_stopped", consumer=self._spec.durable)

    async def _work(self, sub: Any) -> None:
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                fetch = asyncio.create_task(sub.fetch(self._batch, timeout=self._fetch_timeout))
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
                    break
                try:
                    msgs = fetch.result()
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except nats.errors.Error as exc:
                    log.warning("fetch_failed", consumer=self._spec.durable, error=str(exc))
                    await asyncio.sleep(0.5)  # back off while the client reconnects
                    continue
                try:
                    await self._handler(msgs)
                except Exception:  # a handler bug must not stop this worker; JetStream redelivers
                    log.exception("handler_failed", consumer=self._spec.durable, messages=len(msgs))
        finally:
            stopping.cancel()
