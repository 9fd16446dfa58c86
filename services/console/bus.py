"""The console's side of NATS: queue replay commands on the JOBS stream for the jobs service
(the same subject, body and message id as the admin API's) and read the durables' lag. It
connects as the ``console`` identity, which may publish ``jobs.replay`` and read stream and
consumer info, nothing else (services/infra/nats_auth.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from contracts.commands import ReplayRequested
from contracts.streams import CONSUMERS
from contracts.subjects import REPLAY_SUBJECT
from services.infra.broker import connect
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.tooling.operations import replay_msg_id

__all__ = ["CONNECTION_NAME", "CommandBus"]

log = get_logger(__name__)
CONNECTION_NAME = "dfm-console"
CONNECT_WAIT_S = 2.0  # how long a request waits for a first connection
NATS_ERRORS = (NatsError, JetStreamError, asyncio.TimeoutError, TimeoutError, OSError)


class CommandBus:
    """One NATS connection, opened at start-up and reopened on demand when NATS was away."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nc: NatsClient | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start connecting in the background: the pages that need only PostgreSQL work while
        NATS is away, and the connection keeps being retried (nats-py) until it is back."""
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect(), name="console-nats-connect")

    async def _connect(self) -> None:
        try:
            self.nc = await connect(self.settings, name=CONNECTION_NAME)
        except NATS_ERRORS as exc:
            log.warning("console_nats_unavailable", error=type(exc).__name__)
            self._connecting = None  # the next request tries again

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        self._connecting = None
        if self.nc is not None:
            await self.nc.drain()
            self.nc = None

    async def _connected(self) -> NatsClient | None:
        """The connection, waiting briefly for a first connect in progress; None while NATS is away."""
        await self.start()
        task = self._connecting
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), CONNECT_WAIT_S)
        return self.nc if self.nc is not None and self.nc.is_connected else None

    async def replay(self, command: ReplayRequested) -> bool:
        """Queue ``command``; False when NATS cannot take it now (the page says so)."""
        nc = await self._connected()
        if nc is None:
            return False
        try:
            await nc.jetstream().publish(
                REPLAY_SUBJECT,
                command.model_dump_json().encode(),
                headers={"Nats-Msg-Id": replay_msg_id(command)},
                timeout=self.settings.dfm_publish_timeout,
            )
        except NATS_ERRORS as exc:
            log.warning("console_command_publish_failed", subject=REPLAY_SUBJECT, error=type(exc).__name__)
            return False
        return True

    async def consumer_lag(self) -> list[dict[str, Any]] | None:
        """Pending and in-flight messages per durable; None when NATS cannot be asked."""
        nc = await self._connected()
        if nc is None:
            return None
        js = nc.jetstream(timeout=2)
        out: list[dict[str, Any]] = []
        for spec in CONSUMERS:
            try:
                info = await js.consumer_info(spec.stream, spec.durable)
            except NATS_ERRORS as exc:
                out.append({"durable": spec.durable, "stream": spec.stream, "error": type(exc).__name__})
                continue
            out.append(
                {
                    "durable": spec.durable,
                    "stream": spec.stream,
                    "pending": info.num_pending or 0,
                    "ackPending": info.num_ack_pending or 0,
                    "redelivered": info.num_redelivered or 0,
                    "waiting": info.num_waiting or 0,
                }
            )
        return out
