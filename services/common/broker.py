"""NATS connection and idempotent creation of streams and durable consumers."""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from contracts.streams import CONSUMERS, JOBS, STREAMS, WEBHOOKS, ConsumerSpec, StreamSpec
from services.common.logging import get_logger
from services.common.settings import Settings

log = get_logger(__name__)


async def connect(settings: Settings, *, name: str, **options: Any) -> NatsClient:
    """Connect to ``NATS_URL`` (several servers allowed) and keep reconnecting forever."""
    settings.require("nats_url")

    async def on_error(exc: Exception) -> None:  # nats-py's default prints a traceback per retry
        log.warning("nats_connection_error", connection=name, error=type(exc).__name__)

    defaults: dict[str, Any] = {
        "error_cb": on_error,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
    }
    defaults.update(options)
    return await nats.connect(servers=settings.nats_url, **defaults)


def stream_config(spec: StreamSpec, settings: Settings) -> StreamConfig:
    """The JetStream config of a stream spec, with the operator's limits applied."""
    is_webhooks = spec.name == WEBHOOKS.name
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        description=spec.description,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.dfm_stream_max_age if is_webhooks else 7 * 24 * 3600,
        num_replicas=settings.dfm_stream_replicas,
        duplicate_window=settings.dfm_stream_duplicate_window if is_webhooks else 3600,
    )


def consumer_config(spec: ConsumerSpec, ack_wait_s: float | None = None) -> ConsumerConfig:
    """The durable pull-consumer config of a consumer spec."""
    filters = list(spec.filter_subjects)
    return ConsumerConfig(
        durable_name=spec.durable,
        description=spec.description,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s or spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        backoff=list(spec.backoff_s)[: spec.max_deliver - 1] or None,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, settings: Settings) -> None:
    """Create the stream, or update it to the wanted config."""
    config = stream_config(spec, settings)
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def ensure_consumer(
    js: JetStreamContext, spec: ConsumerSpec, ack_wait_s: float | None = None
) -> None:
    """Create the durable consumer, or update it to the wanted config."""
    await js.add_consumer(spec.stream, consumer_config(spec, ack_wait_s))


async def ensure_topology(
    js: JetStreamContext, settings: Settings, consumers: tuple[ConsumerSpec, ...] = CONSUMERS
) -> None:
    """Streams and consumers, created or updated idempotently (ARCHITECTURE.md §4)."""
    for spec in STREAMS:
        await ensure_stream(js, spec, settings)
    for consumer in consumers:
        ack_wait = settings.dfm_consumer_ack_wait_s if consumer.stream == WEBHOOKS.name else None
        await ensure_consumer(js, consumer, ack_wait)


async def prepare_topology(settings: Settings) -> None:
    """Connect once, create or update every stream and consumer, disconnect (start-up tools)."""
    nc = await connect(settings, name="dfm-topology", max_reconnect_attempts=3)
    try:
        await ensure_topology(nc.jetstream(), settings)
    finally:
        await nc.close()


__all__ = [
    "JOBS",
    "WEBHOOKS",
    "connect",
    "consumer_config",
    "ensure_consumer",
    "ensure_stream",
    "ensure_topology",
    "prepare_topology",
    "stream_config",
]
