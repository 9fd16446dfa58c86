"""The batch consumer (the recorder's front) keeps a batch whose window ends in nats-py's bare
``TimeoutError``.

nats-py 2.16 raises a plain ``asyncio.TimeoutError`` from ``fetch`` when the server's 408 for
a pull arrives just before the client's own timer (js/client.py ``_fetch_n``); FastStream
0.7's batch loop catches only ``nats.errors.TimeoutError``, so the messages it had gathered
in that window were dropped and came back only after the durable's AckWait (60 s). That was
the accepted webhook with no row, now and then, under xdist (services/infra/consumer.py).

The race is forced here: on a real nats-server, the fetch after the one that returned the
message raises the bare ``TimeoutError`` the way nats-py does in that branch. The message
must reach the handler within seconds, not after the AckWait.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from contracts.streams import RECORDER
from services.infra.broker import connect, prepare_topology
from services.infra.consumer import PullConsumer
from services.infra.settings import Settings

pytestmark = pytest.mark.asyncio


async def test_a_bare_timeout_ending_the_window_keeps_the_batch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare_topology(settings)
    original = JetStreamContext.PullSubscription.fetch
    raised: list[int] = []
    gathered: list[int] = []

    async def racing_fetch(self: JetStreamContext.PullSubscription, *args: object, **kwargs: object) -> list[Msg]:
        if gathered and not raised:  # the fetch after the one that returned the message
            raised.append(1)
            raise asyncio.TimeoutError  # noqa: UP041 - the very type nats-py raises there
        messages = await original(self, *args, **kwargs)  # type: ignore[arg-type]
        gathered.extend(1 for _ in messages)
        return messages

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", racing_fetch)
    handled: asyncio.Queue[list[Msg]] = asyncio.Queue()

    async def handler(batch: list[Msg]) -> None:
        for msg in batch:
            await msg.ack()
        await handled.put(batch)

    consumer = PullConsumer(settings, RECORDER, handler, batch=200, fetch_timeout=2.0)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(20):
            await consumer.ready.wait()
        nc = await connect(settings, name="test-publisher", identity="ingress")
        try:
            await nc.jetstream().publish("webhooks.aloware.contact.created", b"{}")
        finally:
            await nc.close()
        # the AckWait is 60 s: a dropped batch would come back only then
        async with asyncio.timeout(15):
            batch = await handled.get()
        assert [m.subject for m in batch] == ["webhooks.aloware.contact.created"]
        assert raised == [1], "the bare TimeoutError was not raised: the test did not force the race"
        assert batch[0].metadata.num_delivered == 1
    finally:
        consumer.stop()
        await task
