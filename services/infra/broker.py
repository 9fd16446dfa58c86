"""NATS connection (with this process's identity) and the stream/durable topology.

Two roles, kept apart so that no process can change the stream under another (issue #15):
the *topology step* (``prepare_topology`` as the admin identity: ``dfm nats topology``,
``dfm migrate upgrade``, ``dfm up``, the test rigs) creates and updates streams and durables and
refuses to lower a stream's replicas or retention unless told to; *services* only check that
what they use exists (``ensure_stream``/``ensure_consumer``) and log what differs from their
settings, so a process started with a stale or default environment never rewrites the stream.
"""

from __future__ import annotations

import math
import ssl
import weakref
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
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

from contracts.streams import JOBS, STREAMS, WEBHOOKS, ConsumerSpec, StreamSpec, consumers_with_lanes
from contracts.subjects import subject_matches
from services.infra import nats_auth
from services.infra.logging import get_logger
from services.infra.settings import ConfigError, Settings

log = get_logger(__name__)

# the identity each client connected with (None: no identity of ours, e.g. a test harness)
_IDENTITY_OF: weakref.WeakKeyDictionary[NatsClient, str | None] = weakref.WeakKeyDictionary()


class TopologyMissing(nats.errors.Error):
    """A stream or durable a service needs does not exist, and the service may not create it.
    A ``nats.errors.Error`` so that loops retrying NATS (the ingress's connect loop) wait for
    the topology step instead of dying."""


class TopologyDowngrade(ValueError):
    """The topology step was asked to lower a stream's replicas or retention."""


class LaneBacklog(TopologyDowngrade):
    """``DFM_BULK_SUBJECTS`` would move subjects out of a lane whose durable still has
    undelivered messages, into a lane that is already past them (they would wait for the
    sweep). Refused until that lane is empty (``dfm lanes``)."""


def _covered(patterns: list[str] | tuple[str, ...], subject: str) -> bool:
    """``subject`` (itself a filter, wildcards allowed) lies inside one of ``patterns``."""
    return any(p == subject or subject_matches(p, subject) for p in patterns)


def _filters(info: Any) -> list[str]:
    config = info.config
    return list(config.filter_subjects or ([config.filter_subject] if config.filter_subject else []))


def redact_url(url: str) -> str:
    """``url`` without the password (or token) in its userinfo, for log lines and prints."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return urlunsplit(parts._replace(netloc=f"{user + ':' if user else ''}***@{host}"))


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def connection_identity(settings: Settings, name: str, identity: str | None = None) -> str | None:
    """Which identity of ``nats_auth.IDENTITIES`` a connection uses: the one asked for, else the
    one of its connection name, else the process's (``NATS_IDENTITY``; `dfm run` sets it)."""
    return identity or nats_auth.identity_for(name, admin_api=bool(settings.df_admin_secret)) or settings.nats_identity


def credential_options(settings: Settings, identity: str | None) -> dict[str, Any]:
    """nats-py options carrying the credential of ``identity`` (empty: none configured).

    Order: a JWT creds file, one nkey seed file (a process with one identity, e.g. a pod with
    its own secret mounted), the ``dfm nats creds`` directory (``<identity>.nk``, for a process
    whose connections have different identities, ``dfm up`` and tests), user and password."""
    if settings.nats_creds_file:
        return {"user_credentials": settings.nats_creds_file}
    if settings.nats_nkey_seed_file:
        return {"nkeys_seed": settings.nats_nkey_seed_file}
    if settings.nats_credentials_dir:
        if identity is None:
            raise ConfigError("NATS_CREDENTIALS_DIR is set but this connection has no NATS identity")
        seed = nats_auth.seed_path(settings.nats_credentials_dir, identity)
        if not seed.is_file():
            raise ConfigError(f"NATS_CREDENTIALS_DIR has no {seed.name} (write it with `dfm nats creds --out DIR`)")
        return {"nkeys_seed": str(seed)}
    if settings.nats_user:
        password = settings.nats_password.get_secret_value() if settings.nats_password else ""
        return {"user": settings.nats_user, "password": password}
    return {}


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context when ``NATS_TLS_CA_FILE`` is set (None: plain, for a server
    without TLS such as `dfm up`'s loopback one). It trusts only that CA, not the system's:
    a NATS server's certificate comes from `dfm nats certs` (or the operator's own CA), and a
    certificate some public CA issued for another name must not pass. Hostname checking stays on;
    ``NATS_TLS_HOSTNAME`` names the certificate's host when clients dial an address it does not
    carry. A client certificate (``NATS_TLS_CERT_FILE``/``NATS_TLS_KEY_FILE``) is sent for
    servers that verify clients."""
    if not settings.nats_tls_ca_file:
        if settings.nats_tls_cert_file or settings.nats_tls_key_file:
            raise ConfigError("NATS_TLS_CERT_FILE/NATS_TLS_KEY_FILE need NATS_TLS_CA_FILE (the servers' CA)")
        return None
    if bool(settings.nats_tls_cert_file) != bool(settings.nats_tls_key_file):
        raise ConfigError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.nats_tls_cert_file and settings.nats_tls_key_file:
            context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    except (OSError, ssl.SSLError) as exc:  # a missing or unreadable file: one line at start-up
        raise ConfigError(f"NATS TLS files: {type(exc).__name__}: {exc}") from exc
    return context


def connect_options(settings: Settings, *, name: str, identity: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """(servers, options) for nats-py or FastStream. A configured credential wins over a URL's
    userinfo, which is then dropped (the URL is what gets logged). With ``NATS_TLS_CA_FILE``
    the options carry ``tls`` (an ``ssl.SSLContext``; nats-py then upgrades a ``nats://``
    connection after the server's INFO, and refuses a server that does not offer TLS)."""
    settings.require("nats_url")
    who = connection_identity(settings, name, identity)
    creds = credential_options(settings, who)
    servers = [_without_userinfo(u) for u in settings.nats_url] if creds else list(settings.nats_url)
    options: dict[str, Any] = {"name": name, **creds}
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
        if settings.nats_tls_hostname:
            options["tls_hostname"] = settings.nats_tls_hostname
    if who is not None:
        options["inbox_prefix"] = nats_auth.inbox_prefix(who)
    return servers, options


async def connect(settings: Settings, *, name: str, identity: str | None = None, **options: Any) -> NatsClient:
    """Connect to ``NATS_URL`` (several servers allowed) as this connection's identity and keep
    reconnecting forever."""
    servers, auth = connect_options(settings, name=name, identity=identity)

    async def on_error(exc: Exception) -> None:  # nats-py's default prints a traceback per retry
        # a permissions violation names only the subject refused: worth saying which
        detail = str(exc) if "permissions violation" in str(exc).lower() else None
        log.warning("nats_connection_error", connection=name, error=type(exc).__name__, detail=detail)

    defaults: dict[str, Any] = {
        "error_cb": on_error,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
        **auth,
    }
    defaults.update(options)
    nc = await nats.connect(servers=servers, **defaults)
    _IDENTITY_OF[nc] = connection_identity(settings, name, identity)
    return nc


def _may_manage(js: JetStreamContext) -> bool:
    """Only the admin identity, or a connection that is not one of our services (a test
    harness, a tool on an unauthenticated server), creates what is missing."""
    client = getattr(js, "_nc", None)  # nats-py keeps its client there
    who = _IDENTITY_OF.get(client) if client is not None else None
    return who in (None, nats_auth.ADMIN)


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


def _differences(wanted: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """{field: (current, wanted)} for every field whose values differ."""
    out = {}
    for key, value in wanted.items():
        have = current.get(key)
        same = (
            math.isclose(float(have), float(value), rel_tol=1e-6)
            if isinstance(value, int | float) and isinstance(have, int | float)
            else have == value
        )
        if not same:
            out[key] = (have, value)
    return out


def _stream_fields(config: StreamConfig) -> dict[str, Any]:
    return {
        "subjects": sorted(config.subjects or []),
        "num_replicas": config.num_replicas,
        "max_age": config.max_age or 0,
        "duplicate_window": config.duplicate_window or 0,
    }


def _consumer_fields(config: ConsumerConfig) -> dict[str, Any]:
    filters = sorted(config.filter_subjects or ([config.filter_subject] if config.filter_subject else []))
    return {
        "filter_subjects": filters,
        "ack_wait": config.ack_wait,
        "max_deliver": config.max_deliver,
        "max_ack_pending": config.max_ack_pending,
        "backoff": list(config.backoff or []),
    }


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, settings: Settings) -> None:
    """Check that the stream exists; never change it. A difference from this process's
    settings is a warning naming each field (the topology step decides, not a starting
    process). A missing stream is created only by the admin identity (or a harness)."""
    wanted = stream_config(spec, settings)
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        if not _may_manage(js):
            raise TopologyMissing(
                f"stream {spec.name} does not exist: run `dfm nats topology` "
                "(or `dfm migrate upgrade`) with the admin identity"
            ) from None
        await js.add_stream(wanted)
        return
    diff = _differences(_stream_fields(wanted), _stream_fields(info.config))
    if diff:
        log.warning(
            "stream_config_differs",
            stream=spec.name,
            **{k: {"current": c, "settings": w} for k, (c, w) in diff.items()},
        )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec, ack_wait_s: float | None = None) -> None:
    """Check that the durable exists; never change it (see ``ensure_stream``)."""
    wanted = consumer_config(spec, ack_wait_s)
    try:
        info = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        if not _may_manage(js):
            raise TopologyMissing(
                f"durable {spec.durable} on {spec.stream} does not exist: run "
                "`dfm nats topology` (or `dfm migrate upgrade`) with the admin identity"
            ) from None
        await js.add_consumer(spec.stream, wanted)
        return
    diff = _differences(_consumer_fields(wanted), _consumer_fields(info.config))
    if diff:
        log.warning(
            "consumer_config_differs",
            consumer=spec.durable,
            **{k: {"current": c, "settings": w} for k, (c, w) in diff.items()},
        )


def _ack_wait(settings: Settings, consumer: ConsumerSpec) -> float | None:
    return settings.dfm_consumer_ack_wait_s if consumer.stream == WEBHOOKS.name else None


def topology_consumers(settings: Settings) -> tuple[ConsumerSpec, ...]:
    """Every durable, ghl-sync's lanes split by ``DFM_BULK_SUBJECTS`` (issue #18)."""
    return consumers_with_lanes(settings.dfm_bulk_subjects)


async def ensure_topology(
    js: JetStreamContext, settings: Settings, consumers: tuple[ConsumerSpec, ...] | None = None
) -> None:
    """Streams and consumers exist (created when missing by an identity allowed to; an existing
    one is never changed here: ``apply_topology`` does that)."""
    for spec in STREAMS:
        await ensure_stream(js, spec, settings)
    for consumer in topology_consumers(settings) if consumers is None else consumers:
        await ensure_consumer(js, consumer, _ack_wait(settings, consumer))


def _downgrades(wanted: StreamConfig, current: StreamConfig) -> list[str]:
    """What applying ``wanted`` would lower: fewer replicas, or a shorter retention (0 is
    unlimited, so any limit is shorter)."""
    lowered = []
    if (wanted.num_replicas or 1) < (current.num_replicas or 1):
        lowered.append(f"num_replicas {current.num_replicas} -> {wanted.num_replicas}")
    have, want = current.max_age or 0, wanted.max_age or 0
    if want and (not have or want < have):
        lowered.append(f"max_age {have or 'unlimited'}s -> {want}s")
    return lowered


async def apply_stream(
    js: JetStreamContext, spec: StreamSpec, settings: Settings, *, allow_downgrade: bool = False
) -> None:
    """The topology step for one stream: create it, or update it to the settings. Lowering
    replicas or retention loses redundancy or accepted events, so it is refused
    (``TopologyDowngrade``) unless ``allow_downgrade`` (``DFM_STREAM_ALLOW_DOWNGRADE``)."""
    wanted = stream_config(spec, settings)
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(wanted)
        return
    lowered = _downgrades(wanted, info.config)
    if lowered and not allow_downgrade:
        raise TopologyDowngrade(
            f"stream {spec.name}: refusing to lower {', '.join(lowered)} "
            "(set DFM_STREAM_ALLOW_DOWNGRADE=true to do it on purpose)"
        )
    if _differences(_stream_fields(wanted), _stream_fields(info.config)):
        await js.update_stream(wanted)
        log.info("stream_updated", stream=spec.name, lowered=lowered or None)


async def _where_to_start(js: JetStreamContext, spec: ConsumerSpec, config: ConsumerConfig) -> None:
    """Keep an existing durable's start (JetStream refuses to change it), and start a lane's
    new durable where its sibling's acknowledged messages end: the first upgrade to lanes
    narrows ``ghl-sync`` to the real-time subjects, so the contact events it had not acked yet
    must come from ``ghl-sync-bulk``, and replaying the stream's whole retention into it would
    only be acked again by the ledger (a finished delivery is never re-run)."""
    try:
        info = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        info = None
    if info is not None:
        config.deliver_policy, config.opt_start_seq = info.config.deliver_policy, info.config.opt_start_seq
        return
    if spec.lane != "bulk":
        return
    try:
        sibling = await js.consumer_info(spec.stream, spec.owner)
    except NotFoundError:
        return  # a fresh install: from the start, as every durable
    if not all(_covered(_filters(sibling), f) for f in spec.filter_subjects):
        # the lanes were split before (this durable was deleted since): the sibling's floor says
        # nothing of these subjects, so from the start; the ledger acks what was finished
        log.info("lane_durable_recreated_from_the_start", consumer=spec.durable, sibling=spec.owner)
        return
    floor = sibling.ack_floor.stream_seq if sibling.ack_floor and sibling.ack_floor.stream_seq else 0
    config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, floor + 1
    log.info("lane_durable_created_after_sibling", consumer=spec.durable, sibling=spec.owner, start_seq=floor + 1)


async def apply_topology(
    js: JetStreamContext,
    settings: Settings,
    consumers: tuple[ConsumerSpec, ...] | None = None,
    *,
    allow_downgrade: bool | None = None,
) -> None:
    """Streams and durables created or updated to the settings (ARCHITECTURE.md §4); the admin
    identity's job. ghl-sync's lanes get the filters ``DFM_BULK_SUBJECTS`` gives them; a bulk
    lane's durable created next to an existing ``ghl-sync`` starts after what that one acked."""
    allow = settings.dfm_stream_allow_downgrade if allow_downgrade is None else allow_downgrade
    for spec in STREAMS:
        await apply_stream(js, spec, settings, allow_downgrade=allow)
    # the bulk lane first: it must read its sibling's ack floor before that one's filter narrows
    wanted = topology_consumers(settings) if consumers is None else consumers
    await _refuse_moving_a_backlog(js, wanted)
    for consumer in sorted(wanted, key=lambda c: c.lane != "bulk"):
        config = consumer_config(consumer, _ack_wait(settings, consumer))
        await _where_to_start(js, consumer, config)
        await js.add_consumer(consumer.stream, config)


async def _refuse_moving_a_backlog(js: JetStreamContext, wanted: tuple[ConsumerSpec, ...]) -> None:
    """``LaneBacklog`` when a lane durable would lose subjects to another lane's *existing*
    durable while it still has undelivered messages. (The first split, whose bulk durable is
    new, is fine: that one starts where the old durable's acknowledged messages end.)"""
    existing: dict[str, list[str]] = {}
    pending: dict[str, int] = {}
    for spec in wanted:
        if spec.lane is None:
            continue
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            continue
        existing[spec.durable], pending[spec.durable] = _filters(info), info.num_pending or 0
    for spec in wanted:
        if spec.durable not in existing:
            continue
        lost = [f for f in existing[spec.durable] if not _covered(spec.filter_subjects, f)]
        gainers = [
            other.durable
            for other in wanted
            if other.durable != spec.durable
            and other.durable in existing
            and any(_covered(other.filter_subjects, f) or _covered([f], g) for f in lost for g in other.filter_subjects)
        ]
        if lost and gainers and pending[spec.durable]:
            raise LaneBacklog(
                f"DFM_BULK_SUBJECTS moves {', '.join(sorted(lost))} from {spec.durable} to {', '.join(gainers)}, "
                f"but {spec.durable} still has {pending[spec.durable]} message(s) waiting that {', '.join(gainers)} "
                "would never be given; run `dfm migrate upgrade` again once `dfm lanes` shows it empty"
            )


async def prepare_topology(
    settings: Settings, durables: tuple[ConsumerSpec, ...] = (), *, allow_downgrade: bool | None = None
) -> None:
    """At start-up: the topology step when this process is not a service (``NATS_IDENTITY``
    unset or ``admin``: migrations, ``dfm up``, tools, in-process test rigs), connecting as the
    admin identity; for a service, only the check that the streams and ``durables`` exist."""
    role = settings.nats_identity
    manage = role in (None, nats_auth.ADMIN)
    nc = await connect(
        settings, name="dfm-topology", identity=nats_auth.ADMIN if manage else role, max_reconnect_attempts=3
    )
    try:
        js = nc.jetstream()
        if manage:
            await apply_topology(js, settings, allow_downgrade=allow_downgrade)
        else:
            await ensure_topology(js, settings, consumers=durables)
    finally:
        await nc.close()


__all__ = [
    "JOBS",
    "WEBHOOKS",
    "TopologyDowngrade",
    "TopologyMissing",
    "apply_stream",
    "apply_topology",
    "connect",
    "connect_options",
    "consumer_config",
    "ensure_consumer",
    "ensure_stream",
    "ensure_topology",
    "prepare_topology",
    "redact_url",
    "stream_config",
    "tls_context",
    "topology_consumers",
]
