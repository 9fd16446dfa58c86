"""NATS identities with least privilege (issue #15 parts 1, 2 and 7), against a real nats-server
running the shipped permissions (``services/infra/nats_auth.py``, what ``dfm nats creds``
writes): who is refused what, that each identity can do what its service does, rotation
without downtime, and that no starting process rewrites the stream's replicas or retention.

A refused publish is invisible to the publisher except through the server's asynchronous
``-ERR 'Permissions Violation'`` (nats-py passes it to ``error_cb``) and the missing PubAck or
API answer; every refusal below checks both, and the harness checks nothing landed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from contracts.streams import ALOWARE_SYNC, CONSUMERS, GHL_SYNC, GHL_SYNC_BULK, RECORDER, VERITY_SYNC, WEBHOOKS
from contracts.streams import consumer as consumer_spec
from services.infra import nats_auth
from services.infra.broker import (
    TopologyDowngrade,
    TopologyMissing,
    apply_topology,
    connect,
    connect_options,
    prepare_topology,
    redact_url,
)
from services.infra.settings import Settings
from services.infra.stream_app import start_sync_broker
from services.tooling.embedded import EmbeddedNats, free_port
from tests.support.nats_auth import OUTBOUND_SMS, As, as_identity  # noqa: F401
from tests.support.nats_cluster import three_nodes
from tests.support.sync_rig import eventually


@asynccontextmanager
async def harness(server: EmbeddedNats) -> AsyncIterator[Any]:
    nc = await nats.connect(server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def last_seq(server: EmbeddedNats, stream: str) -> int:
    async with harness(server) as js:
        return int((await js.stream_info(stream)).state.last_seq)


async def refused_connect(url: str, **options: Any) -> str:
    with pytest.raises(nats.errors.Error) as caught:
        await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=2, **options)
    return str(caught.value)


# --- authentication -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A server with exactly what `dfm nats creds` writes: no harness, no no_auth_user."""
    store = tmp_path_factory.mktemp("shipped")
    server = EmbeddedNats(store_dir=store / "nats", auth_config=nats_auth.write_credentials(store / "creds")).start()
    yield server
    server.stop()


async def test_a_client_without_credentials_is_refused(shipped: EmbeddedNats) -> None:
    assert "Authorization Violation" in await refused_connect(shipped.plain_url)


async def test_an_nkey_the_server_does_not_list_is_refused(shipped: EmbeddedNats, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.nk"
    nats_auth.write_secret(stranger, nats_auth.new_seed())
    assert "Authorization Violation" in await refused_connect(shipped.plain_url, nkeys_seed=str(stranger))
    async with as_identity(shipped, "ingress") as ingress:  # while the listed ones get in
        assert ingress.nc.is_connected


@pytest.mark.parametrize("identity", [i.name for i in nats_auth.IDENTITIES])
async def test_every_identity_connects_with_its_own_seed(nats_server: EmbeddedNats, identity: str) -> None:
    async with as_identity(nats_server, identity) as who:
        assert who.nc.is_connected


# --- the ingress ---------------------------------------------------------------------------
async def test_the_ingress_publishes_webhooks_and_reads_the_stream(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    async with as_identity(nats_server, "ingress") as ingress:
        ack = await ingress.js.publish("webhooks.aloware.contact.created", b"{}", headers={"Nats-Msg-Id": "a-1"})
        assert ack.stream == WEBHOOKS.name
        assert (await ingress.js.stream_info(WEBHOOKS.name)).state.last_seq == ack.seq  # health
        assert (await ingress.js.get_msg(WEBHOOKS.name, ack.seq)).subject == "webhooks.aloware.contact.created"
        assert ingress.violations == []


async def test_the_ingress_cannot_queue_jobs_nor_touch_the_stream_config(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    before = await last_seq(nats_server, "JOBS")
    async with as_identity(nats_server, "ingress") as ingress:
        for subject in ("jobs.replay", "jobs.sweep", "jobs.reconcile", "jobs.anything"):
            assert await ingress.refused(subject), subject
        js = ingress.js
        assert await ingress.api_refused(js.delete_stream(WEBHOOKS.name), "$JS.API.STREAM.DELETE.WEBHOOKS")
        assert await ingress.api_refused(js.purge_stream(WEBHOOKS.name), "$JS.API.STREAM.PURGE.WEBHOOKS")
        assert await ingress.api_refused(
            js.update_stream(StreamConfig(name=WEBHOOKS.name, subjects=["webhooks.>"], num_replicas=1, max_age=1)),
            "$JS.API.STREAM.UPDATE.WEBHOOKS",
        )
        assert await ingress.api_refused(
            js.add_consumer(WEBHOOKS.name, ConsumerConfig(durable_name="ghl-sync", ack_policy=AckPolicy.EXPLICIT)),
            "$JS.API.CONSUMER.DURABLE.CREATE.WEBHOOKS.ghl-sync",
        )
    assert await last_seq(nats_server, "JOBS") == before
    async with harness(nats_server) as js:
        assert (await js.stream_info(WEBHOOKS.name)).config.max_age != 1


async def test_the_ingress_with_its_admin_api_queues_only_replays_and_sweeps(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    async with as_identity(nats_server, "ingress-admin") as ingress:
        assert (await ingress.js.publish("jobs.replay", b"{}")).stream == "JOBS"
        assert (await ingress.js.publish("jobs.sweep", b"{}")).stream == "JOBS"
        for subject in ("jobs.reconcile", "jobs.alerts"):
            assert await ingress.refused(subject), subject
        assert await ingress.api_refused(ingress.js.delete_stream("JOBS"), "$JS.API.STREAM.DELETE.JOBS")


# --- the sync consumers ----------------------------------------------------------------------
SAMPLE = {
    GHL_SYNC.durable: "webhooks.aloware.call.call_disposed",
    GHL_SYNC_BULK.durable: "webhooks.aloware.contact.contact_created",  # ghl-sync's bulk lane (#18)
    ALOWARE_SYNC.durable: "webhooks.ghl.contact.update",
    VERITY_SYNC.durable: "webhooks.ghl.contact.update",
    RECORDER.durable: "webhooks.texting.message.inbound",
}


@pytest.mark.parametrize("durable", list(SAMPLE))
async def test_a_consumer_pulls_and_acks_its_own_durable(
    nats_server: EmbeddedNats, clean_streams: None, durable: str
) -> None:
    async with as_identity(nats_server, "ingress") as ingress:
        ack = await ingress.js.publish(SAMPLE[durable], b"{}")
    async with as_identity(nats_server, consumer_spec(durable).owner) as consumer:
        sub = await consumer.js.pull_subscribe_bind(durable, stream=WEBHOOKS.name)  # reads its info
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.metadata.sequence.stream == ack.seq
        await msg.in_progress()  # the +WPI heartbeat of a long rule
        await msg.ack()
        await consumer.nc.flush()
        assert consumer.violations == []
    async with harness(nats_server) as js:
        info = await js.consumer_info(WEBHOOKS.name, durable)
        assert info.ack_floor.stream_seq == ack.seq and info.num_ack_pending == 0


@pytest.mark.parametrize("durable", [GHL_SYNC.durable, ALOWARE_SYNC.durable, VERITY_SYNC.durable, RECORDER.durable])
async def test_a_consumer_cannot_publish_commands_or_events_nor_delete_the_stream(
    nats_server: EmbeddedNats, clean_streams: None, durable: str
) -> None:
    before = await last_seq(nats_server, WEBHOOKS.name)
    async with as_identity(nats_server, durable) as consumer:
        assert await consumer.refused("jobs.replay")
        assert await consumer.refused(OUTBOUND_SMS)  # the forged "text this number" of the audit
        js = consumer.js
        assert await consumer.api_refused(js.delete_stream(WEBHOOKS.name), "$JS.API.STREAM.DELETE.WEBHOOKS")
        assert await consumer.api_refused(js.purge_stream(WEBHOOKS.name), "$JS.API.STREAM.PURGE.WEBHOOKS")
        # nor change its own durable (the topology step owns its config)
        assert await consumer.api_refused(
            js.add_consumer(WEBHOOKS.name, ConsumerConfig(durable_name=durable, ack_wait=1)),
            f"$JS.API.CONSUMER.DURABLE.CREATE.WEBHOOKS.{durable}",
        )
    assert await last_seq(nats_server, WEBHOOKS.name) == before


async def test_a_consumer_cannot_pull_another_services_durable(nats_server: EmbeddedNats, clean_streams: None) -> None:
    async with as_identity(nats_server, "ingress") as ingress:
        await ingress.js.publish(SAMPLE[GHL_SYNC.durable], b"{}")
    async with as_identity(nats_server, ALOWARE_SYNC.durable) as thief:
        # the durable's info is refused first (what a bind reads) ...
        assert await thief.api_refused(
            thief.js.consumer_info(WEBHOOKS.name, GHL_SYNC.durable), "$JS.API.CONSUMER.INFO.WEBHOOKS.ghl-sync"
        )
        # ... and a fetch without it gets nothing
        thief.nc.jetstream(timeout=1.5)
        await thief.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.WEBHOOKS.{GHL_SYNC.durable}", b'{"batch": 1}', reply=thief.nc.new_inbox()
        )
        await eventually(lambda: thief._named("$JS.API.CONSUMER.MSG.NEXT.WEBHOOKS.ghl-sync"), timeout=5)
    async with harness(nats_server) as js:
        assert (await js.consumer_info(WEBHOOKS.name, GHL_SYNC.durable)).num_pending == 1  # still there


# --- nobody but admin changes streams ----------------------------------------------------------
@pytest.mark.parametrize("identity", [i.name for i in nats_auth.IDENTITIES if i.name != nats_auth.ADMIN])
async def test_nobody_but_admin_deletes_or_purges_a_stream(
    nats_server: EmbeddedNats, clean_streams: None, identity: str
) -> None:
    async with as_identity(nats_server, identity) as who:
        refused = await asyncio.gather(
            *(
                who.api_refused(getattr(who.js, f"{op}_stream")(stream), f"$JS.API.STREAM.{op.upper()}.{stream}")
                for stream in (WEBHOOKS.name, "JOBS")
                for op in ("delete", "purge")
            )
        )
        assert all(refused)
    async with harness(nats_server) as js:
        assert {s.config.name for s in await js.streams_info()} >= {WEBHOOKS.name, "JOBS"}


async def test_admin_creates_purges_and_deletes_streams(nats_server: EmbeddedNats, clean_streams: None) -> None:
    async with as_identity(nats_server, nats_auth.ADMIN) as admin:
        await admin.js.add_stream(StreamConfig(name="SCRATCH", subjects=["scratch.>"]))
        assert await admin.js.purge_stream("SCRATCH")
        assert await admin.js.delete_stream("SCRATCH")
        assert await admin.js.purge_stream(WEBHOOKS.name)
        assert admin.violations == []


# --- jobs, scheduler, mcp, gateway, cli ----------------------------------------------------------
async def test_jobs_scans_the_stream_through_its_own_ephemeral_consumer_only(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    async with as_identity(nats_server, "ingress") as ingress:
        await ingress.js.publish("webhooks.aloware.contact.created", b"{}")
    async with as_identity(nats_server, "jobs") as jobs:
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0, deliver_policy=DeliverPolicy.ALL)
        sub = await jobs.js.pull_subscribe("webhooks.aloware.>", stream=WEBHOOKS.name, config=config)  # replay scan
        assert len(await sub.fetch(1, timeout=5)) == 1
        for spec in CONSUMERS:  # the lag gauges
            await jobs.js.consumer_info(spec.stream, spec.durable)
        assert (await jobs.js.publish("webhooks.aloware.contact.created", b"{}")).stream == WEBHOOKS.name  # redrive
        assert jobs.violations == []
        # the scan's grant cannot take over a service's durable
        assert await jobs.api_refused(
            jobs.js.add_consumer(
                WEBHOOKS.name, ConsumerConfig(name="ghl-sync", durable_name="ghl-sync", filter_subject="webhooks.>")
            ),
            "$JS.API.CONSUMER.CREATE.WEBHOOKS.ghl-sync",
        )
        assert await jobs.api_refused(
            jobs.js.delete_consumer(WEBHOOKS.name, "ghl-sync"), "$JS.API.CONSUMER.DELETE.WEBHOOKS.ghl-sync"
        )


async def test_scheduler_mcp_and_gateway_publish_only_their_commands(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    async with as_identity(nats_server, "scheduler") as scheduler:
        for subject in ("jobs.sweep", "jobs.alerts", "jobs.reconcile"):
            assert (await scheduler.js.publish(subject, b"{}")).stream == "JOBS"
        assert await scheduler.refused("jobs.replay")
        assert await scheduler.refused(OUTBOUND_SMS)
    async with as_identity(nats_server, "mcp") as mcp:
        assert (await mcp.js.publish("jobs.replay", b"{}")).stream == "JOBS"
        await mcp.js.stream_info(WEBHOOKS.name)
        await mcp.js.consumer_info(WEBHOOKS.name, GHL_SYNC.durable)
        assert await mcp.refused(OUTBOUND_SMS)
        assert await mcp.refused("jobs.sweep")
    async with as_identity(nats_server, "gateway") as gateway:
        await gateway.nc.flush()  # its health check: a round trip, nothing else
        assert await gateway.refused("jobs.replay")
        assert await gateway.api_refused(gateway.js.stream_info(WEBHOOKS.name), "$JS.API.STREAM.INFO.WEBHOOKS")


# --- how our code connects -----------------------------------------------------------------
def test_a_configured_identity_wins_over_the_urls_userinfo_and_logs_never_show_a_password() -> None:
    settings = Settings(nats_url="nats://harness:s3cret@127.0.0.1:4222", nats_credentials_dir="/creds")
    with pytest.raises(Exception, match=r"ghl-sync\.nk"):  # the seed must exist
        connect_options(settings, name="dfm-ghl-sync", identity="ghl-sync")
    assert redact_url("nats://harness:s3cret@127.0.0.1:4222") == "nats://harness:***@127.0.0.1:4222"
    assert redact_url("nats://tok3n@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222") == "nats://h:4222"


async def test_service_connections_use_their_identity_even_with_a_harness_url(
    nats_server: EmbeddedNats, settings: Settings
) -> None:
    harness_url = f"nats://harness:pw@127.0.0.1:{nats_server.port}"  # what a URL-only client would use
    settings = settings.model_copy(update={"nats_url": [harness_url]})
    servers, options = connect_options(settings, name="dfm-recorder")
    assert servers == [nats_server.plain_url] and options["nkeys_seed"].endswith("recorder.nk")
    nc = await connect(settings, name="dfm-recorder", max_reconnect_attempts=0)
    try:
        with pytest.raises((TimeoutError, nats.errors.TimeoutError)):  # not the harness: no publish
            await nc.jetstream(timeout=1).publish("jobs.replay", b"{}")
    finally:
        await nc.close()


@pytest.mark.parametrize("durable", [GHL_SYNC.durable, GHL_SYNC_BULK.durable, ALOWARE_SYNC.durable])
async def test_a_sync_broker_consumes_its_durable_as_its_service(
    nats_server: EmbeddedNats, settings: Settings, durable: str
) -> None:
    """The FastStream subscriber as `dfm run` builds it, on the service's own identity: its fetch
    inbox must lie under that identity's prefix (ghl-sync-bulk's is ghl-sync's)."""
    spec = consumer_spec(durable)
    service = settings.model_copy(update={"nats_identity": spec.owner})
    async with as_identity(nats_server, "ingress") as ingress:
        ack = await ingress.js.publish(SAMPLE[durable], b"{}")
    seen: list[int] = []

    async def handle(msg: Any) -> None:
        seen.append(msg.metadata.sequence.stream)
        await msg.ack()

    async def handled() -> list[int] | None:
        return seen or None

    broker = await start_sync_broker(service, spec, handle, 1)
    try:
        await eventually(handled, timeout=10)
    finally:
        await broker.stop()
    assert seen == [ack.seq]


async def test_a_service_never_creates_its_missing_durable(nats_server: EmbeddedNats, settings: Settings) -> None:
    async with harness(nats_server) as js:
        await js.delete_consumer(WEBHOOKS.name, GHL_SYNC.durable)
    service = settings.model_copy(update={"nats_identity": "ghl-sync"})  # as `dfm run ghl-sync`

    async def handle(_: Any) -> None:
        raise AssertionError("nothing to consume")

    with pytest.raises(TopologyMissing, match="ghl-sync"):
        await start_sync_broker(service, GHL_SYNC, handle, 1)
    async with harness(nats_server) as js:
        assert GHL_SYNC.durable not in {c.name for c in await js.consumers_info(WEBHOOKS.name)}


# --- rotation without downtime ---------------------------------------------------------------
async def test_rotation_accepts_old_and_new_seeds_then_refuses_the_old_after_a_reload(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    conf = nats_auth.write_credentials(creds)
    server = EmbeddedNats(store_dir=tmp_path / "nats", auth_config=conf).start()
    try:
        old_seed = tmp_path / "ghl-sync.old-copy.nk"
        old_seed.write_bytes(nats_auth.seed_path(creds, "ghl-sync").read_bytes())
        async with as_identity(server, "ghl-sync", old_seed) as before:
            assert before.nc.is_connected

        nats_auth.write_credentials(creds, rotate=True)  # step 1: both keys in auth.inc
        assert len(nats_auth.public_keys(creds)["ghl-sync"]) == 2
        server.reload()
        new_seed = nats_auth.seed_path(creds, "ghl-sync")
        assert new_seed.read_bytes() != old_seed.read_bytes()

        async def both_accepted() -> bool:
            try:
                async with as_identity(server, "ghl-sync", new_seed), as_identity(server, "ghl-sync", old_seed):
                    return True
            except nats.errors.Error:
                return False  # the reload is not done yet

        await eventually(both_accepted, timeout=10)
        async with (
            as_identity(server, "ghl-sync", old_seed) as still_old,  # a service not yet moved
            as_identity(server, "ghl-sync", new_seed) as moved,
        ):
            assert still_old.nc.is_connected and moved.nc.is_connected

            nats_auth.write_credentials(creds, finish_rotation=True)  # step 2: the new key only
            server.reload()

            async def old_refused() -> bool:
                try:
                    nc = await nats.connect(
                        server.plain_url,
                        nkeys_seed=str(old_seed),
                        allow_reconnect=False,
                        max_reconnect_attempts=0,
                        connect_timeout=2,
                    )
                except nats.errors.Error as exc:
                    return "Authorization Violation" in str(exc)
                except OSError:  # the socket reset mid-handshake (a loaded machine): ask again
                    return False
                await nc.close()
                return False  # the reload is not done yet

            await eventually(old_refused, timeout=10)
            await moved.nc.flush()  # the moved service never noticed
            assert moved.nc.is_connected
            await eventually(lambda: _closed_or_reconnecting(still_old.nc), timeout=10)
    finally:
        server.stop()


async def _closed_or_reconnecting(nc: NatsClient) -> bool:
    return not nc.is_connected


def test_the_cli_writes_seeds_private_and_the_server_config_without_secrets(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "creds"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "nats", "creds", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    conf = (out / nats_auth.AUTH_CONF).read_text()
    for ident in nats_auth.IDENTITIES:
        seed = nats_auth.seed_path(out, ident.name)
        assert seed.stat().st_mode & 0o777 == 0o600
        assert seed.read_text().strip() not in conf and nats_auth.public_key(seed.read_bytes()) in conf
    assert not re.search(r"\bS[A-Z][A-Z2-7]{50,}", conf)  # no seed of any kind (S… is a seed, U… public)
    again = subprocess.run(
        [sys.executable, "-m", "services.cli", "nats", "creds", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and (out / nats_auth.AUTH_CONF).read_text() == conf  # keeps the seeds


# --- no starting process lowers replicas or retention (part 7) ---------------------------------
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    """Three authenticated JetStream nodes (streams with three replicas)."""
    conf = nats_auth.write_credentials(tmp_path / "creds", extra_users=[nats_auth.PasswordUser("harness", "pw")])
    yield from three_nodes(tmp_path, auth_config=conf, client_credentials=("harness", "pw"))


async def _stream(urls: list[str]) -> Any:
    nc = await nats.connect(servers=urls)
    try:
        return (await nc.jetstream().stream_info(WEBHOOKS.name)).config
    finally:
        await nc.close()


async def test_a_process_starting_with_lower_replicas_or_retention_changes_nothing(
    cluster: list[EmbeddedNats],
) -> None:
    urls = [n.url for n in cluster]

    async def ready() -> bool:
        try:
            nc = await nats.connect(servers=urls, max_reconnect_attempts=1, connect_timeout=2)
        except Exception:
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:  # no meta leader yet
            return False
        finally:
            await nc.close()

    await eventually(ready, timeout=30)
    env = {"nats_url": ",".join(urls), "nats_credentials_dir": str(cluster[0].credentials_dir)}
    deployed = Settings(**env, dfm_stream_replicas=3, dfm_stream_max_age=14 * 24 * 3600, dfm_stream_duplicate_window=60)
    await eventually(lambda: _applied(deployed), timeout=30)  # the topology step (admin)
    assert (await _stream(urls)).num_replicas == 3

    stale = Settings(
        **env,
        dfm_stream_replicas=1,
        dfm_stream_max_age=3600,  # a default-ish environment
        dfm_stream_duplicate_window=60,
    )
    for service in ("ingress-admin", "recorder", "ghl-sync", "jobs", "scheduler"):  # as `dfm run <service>`
        await prepare_topology(stale.model_copy(update={"nats_identity": service}))
    nc = await connect(stale, name="dfm-ingress")  # the ingress's connect loop checks the streams
    try:
        from services.infra.broker import ensure_stream

        await ensure_stream(nc.jetstream(), WEBHOOKS, stale)
    finally:
        await nc.close()
    config = await _stream(urls)
    assert config.num_replicas == 3 and config.max_age == 14 * 24 * 3600

    with pytest.raises(TopologyDowngrade, match="num_replicas 3 -> 1"):  # the topology step refuses too
        await prepare_topology(stale)
    assert (await _stream(urls)).num_replicas == 3
    await prepare_topology(stale, allow_downgrade=True)  # only when told to
    config = await _stream(urls)
    assert config.num_replicas == 1 and config.max_age == 3600


async def _applied(settings: Settings) -> bool:
    try:
        await prepare_topology(settings)
        return True
    except TopologyDowngrade:
        raise
    except Exception:  # the cluster is still electing stream leaders
        return False


async def test_the_topology_step_refuses_shorter_retention_unless_allowed(
    nats_server: EmbeddedNats, settings: Settings, clean_streams: None
) -> None:
    short = settings.model_copy(update={"dfm_stream_max_age": 60.0, "dfm_stream_duplicate_window": 30.0})
    async with harness(nats_server) as js:
        with pytest.raises(TopologyDowngrade, match="max_age"):
            await apply_topology(js, short)
        assert (await js.stream_info(WEBHOOKS.name)).config.max_age == settings.dfm_stream_max_age
        await apply_topology(js, short.model_copy(update={"dfm_stream_allow_downgrade": True}))
        assert (await js.stream_info(WEBHOOKS.name)).config.max_age == 60.0
        await apply_topology(js, settings)  # longer again: never refused


async def test_a_dfm_run_process_connects_as_its_own_identity_not_the_urls(tmp_path: Path, clean_db: str) -> None:
    """`dfm run recorder` with a URL carrying the harness's password and the seeds directory:
    the server's monitoring names the recorder's nkey as the user of its connections."""
    import os
    import subprocess
    import sys

    import httpx

    monitor = free_port()
    conf = nats_auth.write_credentials(tmp_path / "creds", extra_users=[nats_auth.PasswordUser("harness", "pw")])
    server = EmbeddedNats(
        store_dir=tmp_path / "nats",
        auth_config=conf,
        client_credentials=("harness", "pw"),
        extra_args=("-m", str(monitor)),
    ).start()
    try:
        async with harness(server) as js:
            await apply_topology(js, Settings(nats_url=server.url))
        env = {
            "PATH": os.environ["PATH"],
            "NATS_URL": server.url,
            "NATS_CREDENTIALS_DIR": str(conf.parent),
            "DATABASE_URL": clean_db,
            "METRICS_PORT": "0",
            "LOG_LEVEL": "warning",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "recorder"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            recorder_key = nats_auth.public_key(nats_auth.seed_path(conf.parent, "recorder").read_bytes())

            async def users() -> set[str]:
                async with httpx.AsyncClient() as client:
                    conns = (await client.get(f"http://127.0.0.1:{monitor}/connz?auth=true")).json()["connections"]
                return {c.get("authorized_user", "") for c in conns if c.get("name", "").startswith("dfm-")}

            assert await eventually(users, timeout=30) == {recorder_key}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        server.stop()


async def test_migrate_upgrade_runs_the_topology_step_as_admin(
    nats_server: EmbeddedNats, database_url: str, clean_streams: None
) -> None:
    """`dfm migrate upgrade` (the migrations Job) is where the topology is made: a durable that
    is missing comes back, made by the admin identity from the seeds directory."""
    import os
    import subprocess
    import sys

    async with harness(nats_server) as js:
        await js.delete_consumer(WEBHOOKS.name, GHL_SYNC.durable)
    env = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": database_url,
        "NATS_URL": nats_server.plain_url,
        "NATS_CREDENTIALS_DIR": str(nats_server.credentials_dir),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "migrate", "upgrade", "head"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "durables ready" in done.stdout
    async with harness(nats_server) as js:
        assert GHL_SYNC.durable in {c.name for c in await js.consumers_info(WEBHOOKS.name)}


def test_dfm_run_without_its_seed_stops_with_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    nats_auth.write_credentials(tmp_path)
    nats_auth.seed_path(tmp_path, "recorder").unlink()
    env = {
        "PATH": os.environ["PATH"],
        "NATS_URL": "nats://127.0.0.1:1",
        "NATS_CREDENTIALS_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://probe@127.0.0.1:1/probe",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "recorder"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dfm: error: NATS_CREDENTIALS_DIR has no recorder.nk (write it with `dfm nats creds --out DIR`)"
    ]
