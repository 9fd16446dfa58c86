"""Who may do what on NATS: the one table of identities, and the credentials for them.

Anyone who can publish on NATS gets around every webhook check (a forged
``webhooks.ghl.provider_message.provider_outbound_sms`` makes verity-sync text any number), and
anyone who can call ``$JS.API.STREAM.DELETE.WEBHOOKS`` loses every accepted event. So each
service connects as its own identity whose permissions are exactly what its code does on NATS
(derived from every publish, fetch, ack and JetStream API call in services/; the table is
repeated in deploy/README.md "NATS identities"), and only ``admin`` (the topology step:
``dfm nats topology``, ``dfm migrate upgrade``, ``dfm up``, ``dfm restore``) creates, updates,
purges or deletes streams and durables.

Identities are nkeys: the server's config holds only public keys (no secret in it), each process
holds one seed file. ``dfm nats creds --out DIR`` makes them per deployment, never per image:
``DIR/<identity>.nk`` (0600) for the processes and ``DIR/auth.inc`` for the servers, which the
shipped ``deploy/nats/*.conf`` include. Rotation without downtime: ``--rotate`` keeps each old
seed as ``<identity>.nk.old`` and the server config then lists both public keys with the same
permissions (NATS matches an nkey user by public key, so two entries are two users with one
permission set); ``--finish-rotation`` drops the old keys, and after a reload the server refuses
them and closes connections still using them.

JetStream subjects used below (nats-server 2.10+, nats-py 2.x): a JetStream publish is a core
publish whose PubAck comes back on the publisher's inbox; a pull fetch publishes to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` with the fetch inbox as reply; acks, naks,
``+WPI`` heartbeats and terms publish to the message's reply subject
``$JS.ACK.<stream>.<durable>.…``; every API call is a request on ``$JS.API.…`` answered on the
inbox. Each identity has its own inbox prefix ``_INBOX.<identity>`` (``connect()`` sets it), so
no service can read the replies (fetched messages included) meant for another. No service
answers requests, so none needs ``allow_responses``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.streams import (
    ALOWARE_SYNC,
    CONSUMERS,
    GHL_SYNC,
    GHL_SYNC_BULK,
    JOBS_CONSUMER,
    JOBS_STREAM,
    RECORDER,
    VERITY_SYNC,
    WEBHOOKS_STREAM,
    ConsumerSpec,
)
from contracts.subjects import (
    AGENTS_SEED_SUBJECT,
    ALERTS_SUBJECT,
    LISTS_REBUILD_SUBJECT,
    PURGE_SUBJECT,
    RECONCILE_SUBJECT,
    REPLAY_SUBJECT,
    SWEEP_SUBJECT,
    EntityType,
    Source,
    webhook_subject,
)

ADMIN = "admin"
SEED_SUFFIX = ".nk"
OLD_SEED_SUFFIX = ".nk.old"
AUTH_CONF = "auth.inc"  # an include file (not a whole config)


@dataclass(frozen=True)
class Identity:
    """One NATS user: what it may publish and subscribe to (deny wins over allow)."""

    name: str
    used_by: str
    publish: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()

    @property
    def inbox(self) -> str:
        """The inbox prefix its connections use; replies to it reach only this identity."""
        return inbox_prefix(self.name)

    def permissions(self) -> dict[str, dict[str, list[str]]]:
        """The nats-server ``permissions`` map. Nothing to publish is ``deny: [">"]`` (a missing
        ``publish`` block would allow everything); every identity subscribes to its inbox."""
        publish: dict[str, list[str]] = (
            {"allow": list(dict.fromkeys(self.publish))} if self.publish else {"deny": [">"]}
        )
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        subscribe: dict[str, list[str]] = {"allow": [*self.subscribe, f"{self.inbox}.>"]}
        if self.subscribe_deny:
            subscribe["deny"] = list(self.subscribe_deny)
        return {"publish": publish, "subscribe": subscribe}


def inbox_prefix(identity: str) -> str:
    return f"_INBOX.{identity}"


# --- subject builders (one place for the JetStream API names) ------------------------------
def _api(*tokens: str) -> str:
    return "$JS.API." + ".".join(tokens)


STREAM_INFO = tuple(_api("STREAM", "INFO", s) for s in (WEBHOOKS_STREAM, JOBS_STREAM))  # verify on start


def _consume(spec: ConsumerSpec) -> tuple[str, ...]:
    """Pull and settle messages of one durable, and read its info (FastStream and PullConsumer
    look the durable up before they fetch; they create nothing when it exists)."""
    return (
        _api("CONSUMER", "INFO", spec.stream, spec.durable),
        _api("CONSUMER", "MSG", "NEXT", spec.stream, spec.durable),
        f"$JS.ACK.{spec.stream}.{spec.durable}.>",
    )


def _msg_get(stream: str) -> str:
    return _api("STREAM", "MSG", "GET", stream)


WEBHOOK_DURABLES = tuple(c for c in CONSUMERS if c.stream == WEBHOOKS_STREAM)
# jobs' replay scan (services/jobs/replay.py) reads the stream through a short-lived ephemeral
# consumer with a random name; the deny list keeps that grant from creating, changing or
# draining a service's durable
SCAN = (_api("CONSUMER", "CREATE", WEBHOOKS_STREAM, ">"), _api("CONSUMER", "MSG", "NEXT", WEBHOOKS_STREAM, "*"))
SCAN_DENY = tuple(
    s
    for c in WEBHOOK_DURABLES
    for s in (
        _api("CONSUMER", "CREATE", WEBHOOKS_STREAM, c.durable),
        _api("CONSUMER", "CREATE", WEBHOOKS_STREAM, c.durable, ">"),
        _api("CONSUMER", "MSG", "NEXT", WEBHOOKS_STREAM, c.durable),
    )
)
CONSUMER_INFO_ALL = tuple(_api("CONSUMER", "INFO", c.stream, c.durable) for c in CONSUMERS)  # lag gauges
# services/ingress/admin/: replays, sweeps and the call-list commands whose vendor calls jobs makes
ADMIN_API_COMMANDS = (REPLAY_SUBJECT, SWEEP_SUBJECT, AGENTS_SEED_SUBJECT, LISTS_REBUILD_SUBJECT)
# verity-sync's AP-3 analytics event (services/verity_sync/appointments.py)
AP3_SUBJECT = webhook_subject(Source.BROADCAST, EntityType.BROADCAST, "analytics_updated")

_INGRESS_PUBLISH = ("webhooks.>", *STREAM_INFO, _msg_get(WEBHOOKS_STREAM))  # duplicate's first id

IDENTITIES: tuple[Identity, ...] = (
    # $JS.SNAPSHOT.*: the chunk acks of a snapshot and the chunks of a restore travel outside
    # $JS.API, so `nats stream backup` / `nats stream restore` (deploy/README.md) need them too
    Identity(
        ADMIN,
        "the topology step (dfm nats topology / migrate upgrade / up), dfm restore, nats stream backup/restore",
        publish=("$JS.API.>", "$JS.SNAPSHOT.ACK.>", "$JS.SNAPSHOT.RESTORE.>", "webhooks.>", "jobs.>"),
    ),
    Identity("ingress", "ingress without its admin API (no DF_ADMIN_SECRET)", publish=_INGRESS_PUBLISH),
    Identity(
        "ingress-admin",
        "ingress serving its admin API on the same connection (replay, sweep, agents seed, lists rebuild)",
        publish=(*_INGRESS_PUBLISH, *ADMIN_API_COMMANDS),
    ),
    Identity("recorder", "recorder", publish=(*STREAM_INFO, *_consume(RECORDER))),
    # both lanes' durables (issue #18): `dfm run ghl-sync [--lane realtime|bulk|all]`
    Identity("ghl-sync", "ghl-sync", publish=(*STREAM_INFO, *_consume(GHL_SYNC), *_consume(GHL_SYNC_BULK))),
    Identity("aloware-sync", "aloware-sync", publish=(*STREAM_INFO, *_consume(ALOWARE_SYNC))),
    Identity("verity-sync", "verity-sync", publish=(*STREAM_INFO, *_consume(VERITY_SYNC), AP3_SUBJECT)),
    Identity(
        "jobs",
        "jobs: commands, dead-letter advisories, sweeps, replays, reconcile",
        publish=(
            *STREAM_INFO,
            *_consume(JOBS_CONSUMER),
            *CONSUMER_INFO_ALL,
            _msg_get(WEBHOOKS_STREAM),
            _msg_get(JOBS_STREAM),
            "webhooks.>",
            "jobs.>",
            *SCAN,
        ),  # jobs.>: a command publisher, like cli
        publish_deny=SCAN_DENY,
        subscribe=("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>", "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>"),
    ),
    Identity(
        "scheduler",
        "scheduler",
        publish=(*STREAM_INFO, SWEEP_SUBJECT, ALERTS_SUBJECT, RECONCILE_SUBJECT, PURGE_SUBJECT),
    ),
    Identity("gateway", "gateway (health connects, nothing else)"),
    Identity(
        "mcp", "mcp operator tools: stream stats, replay", publish=(*STREAM_INFO, *CONSUMER_INFO_ALL, REPLAY_SUBJECT)
    ),
    Identity(
        "console",
        "operator console: replays it queues for jobs, stream info, every durable's info (its lag)",
        publish=(*STREAM_INFO, *CONSUMER_INFO_ALL, REPLAY_SUBJECT),
    ),
    Identity(
        "cli",
        "operator CLI: dfm replay, sweep, backup (a replay and `sweep --here` run jobs' "
        "code in the CLI process; `dfm sweep` queues one)",
        publish=(
            *STREAM_INFO,
            *CONSUMER_INFO_ALL,
            _msg_get(WEBHOOKS_STREAM),
            _msg_get(JOBS_STREAM),
            SWEEP_SUBJECT,
            "webhooks.>",
            *SCAN,
        ),
        publish_deny=SCAN_DENY,
    ),
)
BY_NAME = {i.name: i for i in IDENTITIES}

# which identity each connection of our code uses (the name it passes to broker.connect)
CONNECTION_IDENTITIES = {
    "dfm-ingress": "ingress-admin",  # see identity_for(): "ingress" without an admin secret
    "dfm-recorder": "recorder",
    "dfm-verity-sync-ap": "verity-sync",
    "dfm-jobs": "jobs",
    "dfm-scheduler": "scheduler",
    "dfm-gateway": "gateway",
    "dfm-mcp": "mcp",
    "dfm-console": "console",
    "dfm-cli": "cli",
    "dfm-backup": "cli",
    "dfm-restore": ADMIN,
    "dfm-topology": ADMIN,
}
# `dfm run <service>`: the identity of the process (prepare_topology then only verifies)
SERVICE_IDENTITIES = {
    "ingress": "ingress-admin",
    "recorder": "recorder",
    "ghl-sync": "ghl-sync",
    "aloware-sync": "aloware-sync",
    "verity-sync": "verity-sync",
    "jobs": "jobs",
    "scheduler": "scheduler",
    "gateway": "gateway",
    "mcp": "mcp",
    "console": "console",
}


def identity_for(name: str, *, admin_api: bool = True) -> str | None:
    """The identity of a connection named ``name`` (None: not one of ours). The ingress shares
    one connection between webhooks and its admin API's commands (services/ingress/app.py
    passes the same publisher to both), so it needs ``ingress-admin`` whenever that API is
    enabled; without ``DF_ADMIN_SECRET`` it is the strict ``ingress``."""
    found = CONNECTION_IDENTITIES.get(name)
    if found == "ingress-admin" and not admin_api:
        return "ingress"
    return found


# --- nkeys ---------------------------------------------------------------------------------
def new_seed() -> bytes:
    """A fresh user nkey seed (``SU…``), from 32 random bytes."""
    import nkeys

    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    """The public key (``U…``) the server config lists for ``seed``."""
    import nkeys

    pair = nkeys.from_seed(bytearray(seed.strip()))
    try:
        return bytes(pair.public_key).decode()
    finally:
        pair.wipe()


@dataclass(frozen=True)
class PasswordUser:
    """A user/password entry (test harness only; deployments use nkeys)."""

    user: str
    password: str
    permissions: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    )


def _quoted(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{s}"' for s in items) + "]"


def _permissions_conf(perms: dict[str, dict[str, list[str]]]) -> str:
    parts = []
    for kind, block in perms.items():
        inner = ", ".join(f"{k}: {_quoted(v)}" for k, v in block.items())
        parts.append(f"{kind}: {{{inner}}}")
    return "{" + ", ".join(parts) + "}"


def render_authorization(keys: dict[str, list[str]], extra_users: Iterable[PasswordUser] = ()) -> str:
    """The server's ``authorization`` block: one entry per public key (two for an identity in
    the middle of a rotation), each with its identity's permissions."""
    lines = [
        "# written by `dfm nats creds`: public keys only, no secret (services/infra/nats_auth.py)",
        "authorization {",
        "  users = [",
    ]
    for name in sorted(keys):
        perms = _permissions_conf(BY_NAME[name].permissions())
        for key in keys[name]:
            lines.append(f"    {{nkey: {key}, permissions: {perms}}}  # {name}")
    for extra in extra_users:
        lines.append(
            f'    {{user: "{extra.user}", password: "{extra.password}", '
            f"permissions: {_permissions_conf(extra.permissions)}}}"
        )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def write_secret(path: Path, data: bytes) -> None:
    """Created 0600 before any byte is written (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data + b"\n")
    path.chmod(0o600)


def seed_path(directory: Path | str, identity: str) -> Path:
    return Path(directory) / f"{identity}{SEED_SUFFIX}"


def public_keys(directory: Path) -> dict[str, list[str]]:
    """Every identity's accepted public keys, read from the seeds in ``directory``."""
    keys: dict[str, list[str]] = {}
    for ident in IDENTITIES:
        for suffix in (SEED_SUFFIX, OLD_SEED_SUFFIX):
            path = directory / f"{ident.name}{suffix}"
            if path.exists():
                keys.setdefault(ident.name, []).append(public_key(path.read_bytes()))
    return keys


def write_credentials(
    directory: Path | str,
    *,
    rotate: bool = False,
    finish_rotation: bool = False,
    extra_users: Iterable[PasswordUser] = (),
) -> Path:
    """Make (or rotate) every identity's seed in ``directory`` and write ``auth.inc`` from them.

    First run: one seed per identity. ``rotate``: each current seed becomes ``.nk.old`` and a new
    one is written; both keys are accepted until ``finish_rotation`` removes the old ones.
    Existing seeds are never replaced otherwise, so running it again is harmless."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for ident in IDENTITIES:
        current, old = seed_path(directory, ident.name), directory / f"{ident.name}{OLD_SEED_SUFFIX}"
        if finish_rotation:
            old.unlink(missing_ok=True)
            continue
        if rotate and current.exists():
            if old.exists():
                raise ValueError(f"{ident.name}: a rotation is already in progress (finish it first)")
            current.replace(old)
        if not current.exists():
            write_secret(current, new_seed())
    conf = directory / AUTH_CONF
    conf.write_text(render_authorization(public_keys(directory), extra_users))
    conf.chmod(0o644)  # public keys only: servers (and their ConfigMap) may read it
    return conf


__all__ = [
    "ADMIN",
    "AUTH_CONF",
    "BY_NAME",
    "IDENTITIES",
    "Identity",
    "PasswordUser",
    "identity_for",
    "inbox_prefix",
    "new_seed",
    "public_key",
    "public_keys",
    "render_authorization",
    "seed_path",
    "write_credentials",
]


def service_identity(service: str, *, admin_api: bool = True) -> str | None:
    """The identity of ``dfm run <service>`` (None: the sandbox, which never uses NATS)."""
    found = SERVICE_IDENTITIES.get(service)
    if found == "ingress-admin" and not admin_api:
        return "ingress"
    return found


def observer(password: str) -> PasswordUser:
    """`dfm up` only: the user of connections without credentials (``no_auth_user``), so local
    tools can list streams and consumers of the dev stack. It reads JetStream metadata and
    nothing else: no publish, no message content, not the replies meant for an identity."""
    reads = (
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.CONSUMER.NAMES.*",
        "$JS.API.CONSUMER.LIST.*",
        "$JS.API.CONSUMER.INFO.*.*",
    )
    return PasswordUser(
        "observer",
        password,
        {
            "publish": {"allow": list(reads)},
            "subscribe": {"allow": ["_INBOX.>"], "deny": [f"{i.inbox}.>" for i in IDENTITIES]},
        },
    )


# --- TLS (deploy/README.md "NATS TLS") -----------------------------------------------------
# `dfm nats certs --out DIR` writes these; deploy/nats/*.conf read them under /etc/nats/tls
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
DEFAULT_TLS_HOSTS = ("localhost", "127.0.0.1", "nats")
TLS_DAYS = 825  # the longest server-certificate lifetime common clients accept


def write_certificates(
    directory: Path | str, hosts: Iterable[str] = DEFAULT_TLS_HOSTS, *, days: int = TLS_DAYS
) -> Path:
    """A private CA and one server certificate signed by it, for every NATS server of a
    deployment (client port and cluster routes): ``ca.pem`` (public: every client gets it),
    ``ca-key.pem`` (0600, keep it offline: it signs the next certificate),
    ``server-cert.pem`` and ``server-key.pem`` (0600, the servers only). ``hosts`` become the
    certificate's subject alternative names (IP addresses as such), so they must cover every
    name clients and routes dial (``nats``, ``dfm-nats-1`` ...). The certificate carries both
    serverAuth and clientAuth: a route dials its peers with it. An existing CA is reused, so a
    new server certificate (other hosts, or renewal) stays trusted by the clients' ``ca.pem``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = list(dict.fromkeys(hosts))
    if not hosts:
        raise ValueError("at least one --host: the names clients connect to")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).strip()

    ca_cert_path, ca_key_path = directory / CA_CERT, directory / CA_KEY
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path}: not an EC key written by `dfm nats certs`")
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "df-middleware NATS CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=10 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write_secret(ca_key_path, pem_key(ca_key))
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        ca_cert_path.chmod(0o644)

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_secret(directory / SERVER_KEY, pem_key(key))
    (directory / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / SERVER_CERT).chmod(0o644)
    return directory
