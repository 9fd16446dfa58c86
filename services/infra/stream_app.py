"""FastStream front of the sync consumers: one NATS broker, one pull subscriber bound to the
service's durable, ``workers`` concurrent handlers, manual acknowledgement.

The durable's configuration is ours (the topology step, ``apply_topology``: no BackOff list,
short AckWait, filters per implemented rule); FastStream binds to it and drives the fetch loop, and every
message goes to ``EventConsumer.handle``, which acks, naks with delay or terminates it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.subscriber.usecases.stream_pull_subscriber import ConcurrentPullStreamSubscriber
from faststream.security import SASLPlaintext
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from contracts.streams import ConsumerSpec
from services.infra.broker import connect_options, prepare_topology
from services.infra.logging import BROKER_LOGGER
from services.infra.metrics_server import NATS_TIMEOUT_S, PROCESS_HEALTH, FetchLoop
from services.infra.nats_auth import inbox_prefix
from services.infra.runtime import on_termination
from services.infra.settings import Settings

MessageHandler = Callable[[Msg], Awaitable[None]]


def faststream_auth(options: dict[str, Any]) -> dict[str, Any]:
    """``connect_options`` as FastStream takes them: credentials through ``security=`` (its
    nats-py keyword arguments for them are deprecated since 0.7), the rest as they are."""
    options = dict(options)
    user, password = options.pop("user", None), options.pop("password", None)
    seed, creds = options.pop("nkeys_seed", None), options.pop("user_credentials", None)
    # TLS travels in the security object too (NatsBroker has no `tls=`; its parser turns the
    # object's ssl_context into nats-py's `tls`)
    tls = {"ssl_context": options.pop("tls", None), "tls_hostname": options.pop("tls_hostname", None)}
    try:
        from faststream.nats.security import (
            NatsCredentials,
            NatsNKey,
            NatsSecurity,
            NatsUserPassword,
        )
    except ImportError:  # FastStream 0.6: only the keyword arguments
        options.update(
            {
                k: v
                for k, v in (
                    ("nkeys_seed", seed),
                    ("user_credentials", creds),
                    ("tls", tls["ssl_context"]),
                    ("tls_hostname", tls["tls_hostname"]),
                )
                if v
            }
        )
        NatsCredentials = NatsNKey = NatsSecurity = NatsUserPassword = None  # type: ignore[assignment,misc]
    if NatsNKey is None:
        if user:
            options["security"] = SASLPlaintext(username=user, password=password or "")
    elif seed:
        options["security"] = NatsNKey.from_file(seed, **tls)
    elif creds:
        options["security"] = NatsCredentials(creds, **tls)
    elif user:
        options["security"] = NatsUserPassword(user, password or "", **tls)
    elif tls["ssl_context"] is not None:
        options["security"] = NatsSecurity(**tls)
    return options


def durable_broker(settings: Settings, spec: ConsumerSpec) -> NatsBroker:
    """A broker connecting as the durable ``spec``'s own identity, with no subscriber yet."""
    # the service's own identity (nats_auth): it may pull, ack and read the info of its own
    # durables only (ghl-sync's two lanes are one identity); FastStream reads that info first
    # and, the durable existing, creates nothing
    servers, auth = connect_options(settings, name=f"dfm-{spec.durable}", identity=spec.owner)
    # its records go through structlog (configure_logging); its per-message "Received" and
    # "Processed" lines are debug, its errors keep their level
    return NatsBroker(
        servers,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # FastStream hints int; nats-py takes float seconds
        graceful_timeout=settings.dfm_drain_timeout_s,
        **faststream_auth(auth),
        logger=logging.getLogger(BROKER_LOGGER),
        log_level=logging.DEBUG,
    )


def sync_broker(
    settings: Settings, spec: ConsumerSpec, handle: MessageHandler, workers: int, progress: FetchLoop | None = None
) -> NatsBroker:
    """A broker whose single subscriber feeds ``handle`` from the durable ``spec``; every
    handler run is recorded in ``progress`` (the readiness probe's view of the fetch loop)."""
    broker = durable_broker(settings, spec)
    progress = progress or FetchLoop(spec.durable, workers)

    @broker.subscriber(
        spec.filter_subjects[0],
        stream=JStream(spec.stream, declare=False),
        durable=spec.durable,
        pull_sub=PullSub(batch_size=workers, timeout=5.0),
        max_workers=workers,
        ack_policy=AckPolicy.MANUAL,
        # the fetch inbox under the identity's prefix too (FastStream's default is _INBOX.)
        inbox_prefix=f"{inbox_prefix(spec.owner)}.".encode(),  # a lane durable: its service's identity
    )
    async def on_message(msg: NatsMessage) -> None:
        with progress.handling():
            await handle(msg.raw_message)

    return broker


@dataclass(frozen=True)
class Subscription:
    """One durable a process serves: its messages go to ``handle``, ``workers`` at a time."""

    spec: ConsumerSpec
    handle: MessageHandler
    workers: int


async def serve_until_terminated(settings: Settings, spec: ConsumerSpec, handle: MessageHandler, workers: int) -> None:
    """Consume until SIGTERM/SIGINT, then drain: no new fetches, the messages in hand finish
    and are acked (up to ``DFM_DRAIN_TIMEOUT_S``); anything fetched but not started is left
    unacked and redelivered to another replica after the AckWait."""
    await serve_all_until_terminated(settings, [Subscription(spec, handle, workers)])


async def serve_all_until_terminated(settings: Settings, subscriptions: Sequence[Subscription]) -> None:
    """``serve_until_terminated`` for several durables at once (ghl-sync's lanes, issue #18):
    a broker and fetch loop each, so one durable's backlog never waits behind another's, all
    drained together on SIGTERM/SIGINT."""
    stop = asyncio.Event()
    on_termination(asyncio.get_running_loop(), stop.set)
    started: list[tuple[NatsBroker, FetchLoop]] = []
    try:
        for sub in subscriptions:
            progress = FetchLoop(sub.spec.durable, sub.workers)
            broker = await start_sync_broker(settings, sub.spec, sub.handle, sub.workers, progress)
            started.append((broker, progress))
            PROCESS_HEALTH.watch(settings, progress, functools.partial(broker.ping, NATS_TIMEOUT_S))
        await stop.wait()
    finally:
        for _, progress in started:
            progress.drain()  # not ready while the messages in hand finish
        await asyncio.gather(*(stop_sync_broker(broker) for broker, _ in started))
        for _, progress in started:
            PROCESS_HEALTH.forget(progress)


def fetch_timeouts_as_nats(broker: NatsBroker) -> int:
    """Make every pull subscription's ``fetch`` of ``broker`` raise only
    ``nats.errors.TimeoutError`` on a timeout; how many it guarded. Call right after
    ``broker.start()``: the fetch loops' tasks it created have not run yet (FastStream 0.7.8:
    nothing suspends between their creation and its return), and they look ``fetch`` up on
    every call.

    nats-py 2.16 (js/client.py ``_fetch_n``, its two ``raise asyncio.TimeoutError``) raises a
    bare ``TimeoutError`` when the server's 408 for a fetch arrives just before the client's
    own timer; FastStream 0.7's pull loops catch only ``nats.errors.TimeoutError``. In the batch
    loop that ended the loop's task and dropped the messages gathered earlier in the same
    window: they came back only after the AckWait (60 s), and FastStream's supervisor
    restarted the loop, logging that once per process. (The single-message loop only got an
    error log and a restart: nats-py raises it there with nothing gathered.)"""
    guarded = 0
    for subscriber in broker.subscribers:
        subscription = getattr(subscriber, "subscription", None)
        if not isinstance(subscription, JetStreamContext.PullSubscription):
            continue
        fetch = subscription.fetch

        async def fetch_timing_out_as_nats(*args: Any, _fetch: Any = fetch, **kwargs: Any) -> list[Msg]:
            try:
                return cast(list[Msg], await _fetch(*args, **kwargs))
            except NatsTimeoutError:
                raise
            except TimeoutError as exc:
                raise NatsTimeoutError from exc

        subscription.fetch = fetch_timing_out_as_nats  # type: ignore[method-assign]
        guarded += 1
    return guarded


async def stop_sync_broker(broker: NatsBroker) -> None:
    """``broker.stop()``, each pull subscriber's fetch loop ended (and awaited) first.

    FastStream 0.7.8 stops a concurrent pull subscriber by cancelling its fetch task without
    awaiting it, then closing its in-memory queue at once (``ConcurrentMixin.stop``): a
    fetched message whose hand-over to the queue was already waking then meets the closed
    queue, and asyncio logs "Task exception was never retrieved" with a ClosedResourceError
    traceback on every such SIGTERM. With the fetch task gone first, the messages it held and
    had not handed over are left unacked (redelivered after the AckWait, as FastStream means
    them to be); the messages in hand still finish within the graceful timeout.

    Only a concurrent subscriber (``max_workers`` > 1) is touched: with one worker FastStream
    runs the handler inside the fetch task itself, which must then be left to finish."""
    fetching = [
        task
        for subscriber in broker.subscribers
        if isinstance(subscriber, ConcurrentPullStreamSubscriber)
        for task in subscriber.tasks
        if getattr(task.get_coro(), "__name__", None) == "_consume_pull" and not task.done()
    ]
    for task in fetching:
        task.cancel()
    await asyncio.gather(*fetching, return_exceptions=True)
    await broker.stop()


async def start_sync_broker(
    settings: Settings, spec: ConsumerSpec, handle: MessageHandler, workers: int, progress: FetchLoop | None = None
) -> NatsBroker:
    """Make sure the durable exists (a service only checks; the topology step creates it),
    then start consuming."""
    await prepare_topology(settings, durables=(spec,))
    broker = sync_broker(settings, spec, handle, workers, progress)
    await broker.start()
    fetch_timeouts_as_nats(broker)
    return broker
