"""FastStream front of the sync consumers: one NATS broker, one pull subscriber bound to the
service's durable, ``workers`` concurrent handlers, manual acknowledgement.

The durable's configuration is ours (``ensure_topology``: no BackOff list, short AckWait,
filters per implemented rule); FastStream binds to it and drives the fetch loop, and every
message goes to ``EventConsumer.handle``, which acks, naks with delay or terminates it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg

from contracts.streams import ConsumerSpec
from services.common.broker import prepare_topology
from services.common.runtime import on_termination
from services.common.settings import Settings

MessageHandler = Callable[[Msg], Awaitable[None]]


def sync_broker(settings: Settings, spec: ConsumerSpec, handle: MessageHandler,
                workers: int) -> NatsBroker:
    """A broker whose single subscriber feeds ``handle`` from the durable ``spec``."""
    broker = NatsBroker(settings.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                        graceful_timeout=settings.dfm_drain_timeout_s)

    @broker.subscriber(
        spec.filter_subjects[0],
        stream=JStream(spec.stream, declare=False),
        durable=spec.durable,
        pull_sub=PullSub(batch_size=workers, timeout=5.0),
        max_workers=workers,
        ack_policy=AckPolicy.MANUAL,
    )
    async def on_message(msg: NatsMessage) -> None:
        await handle(msg.raw_message)

    return broker


async def serve_until_terminated(settings: Settings, spec: ConsumerSpec, handle: MessageHandler,
                                 workers: int) -> None:
    """Consume until SIGTERM/SIGINT, then drain: no new fetches, the messages in hand finish
    and are acked (up to ``DFM_DRAIN_TIMEOUT_S``); anything fetched but not started is left
    unacked and redelivered to another replica after the AckWait."""
    stop = asyncio.Event()
    on_termination(asyncio.get_running_loop(), stop.set)
    broker = await start_sync_broker(settings, spec, handle, workers)
    try:
        await stop.wait()
    finally:
        await broker.stop()


async def start_sync_broker(settings: Settings, spec: ConsumerSpec, handle: MessageHandler,
                            workers: int) -> NatsBroker:
    """Make sure the topology exists, then start consuming."""
    await prepare_topology(settings)
    broker = sync_broker(settings, spec, handle, workers)
    await broker.start()
    return broker
