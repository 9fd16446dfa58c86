"""NATS over TLS (issue #15 part 1): the certificates `dfm nats certs` writes, a real nats-server
that requires TLS with them (and the shipped nkey permissions), and ``connect()`` with
``NATS_TLS_CA_FILE``: it connects and publishes; a client speaking plain NATS, one trusting
another CA, and one dialling a name the certificate does not carry are refused."""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from services.infra import nats_auth
from services.infra.broker import connect, connect_options
from services.infra.settings import ConfigError, Settings
from services.infra.stream_app import faststream_auth
from services.tooling.embedded import EmbeddedNats
from tests.support.sync_rig import eventually

ROOT = Path(__file__).parents[2]
# a subject the scheduler identity may publish, answered by nobody: a plain core publish
SUBJECT = "jobs.sweep"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nats_auth.write_certificates(tmp_path_factory.mktemp("tls"), ["nats", "127.0.0.1"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[EmbeddedNats]:
    """TLS required on the client port, and the nkey identities `dfm nats creds` writes."""
    store = tmp_path_factory.mktemp("tls-server")
    tls = ("--tls", "--tlscert", str(certs / nats_auth.SERVER_CERT), "--tlskey", str(certs / nats_auth.SERVER_KEY))
    server = EmbeddedNats(
        store_dir=store / "nats", auth_config=nats_auth.write_credentials(store / "creds"), extra_args=tls
    ).start()
    yield server
    server.stop()


def settings(server: EmbeddedNats, **tls: str) -> Settings:
    assert server.credentials_dir is not None
    return Settings(
        nats_url=server.plain_url, nats_credentials_dir=str(server.credentials_dir), nats_identity="scheduler", **tls
    )


async def refused(cfg: Settings) -> BaseException:
    """The exception a single connect attempt ends with (no retry loop)."""
    with pytest.raises(Exception) as caught:
        async with asyncio.timeout(10):
            nc = await connect(cfg, name="dfm-scheduler", allow_reconnect=False, max_reconnect_attempts=0)
        await nc.close()
    return caught.value


async def connected(cfg: Settings) -> Any:
    """One bounded connect attempt that must succeed (a TLS failure must not become a retry loop)."""
    async with asyncio.timeout(10):
        return await connect(cfg, name="dfm-scheduler", allow_reconnect=False, max_reconnect_attempts=0)


def certificate_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def test_a_client_with_the_ca_connects_and_publishes(server: EmbeddedNats, certs: Path) -> None:
    cfg = settings(server, nats_tls_ca_file=str(certs / nats_auth.CA_CERT), nats_tls_hostname="nats")
    nc = await connected(cfg)
    try:
        assert nc.is_connected and nc._transport is not None
        assert nc._transport._io_writer.get_extra_info("ssl_object") is not None  # TLS, not plain
        await nc.publish(SUBJECT, b"{}")
        await nc.flush(timeout=2)  # the server answered the PING after the publish: accepted
        assert nc.last_error is None
    finally:
        await nc.close()


async def test_the_url_host_is_verified_unless_tls_hostname_names_the_certificate(
    server: EmbeddedNats, certs: Path, tmp_path: Path
) -> None:
    only_nats = nats_auth.write_certificates(tmp_path / "other-host", ["nats"])
    # the server's certificate carries 127.0.0.1 (the address we dial): verified as it is
    ok = await connected(settings(server, nats_tls_ca_file=str(certs / nats_auth.CA_CERT)))
    await ok.close()
    # a server certificate for "nats" only: dialling 127.0.0.1 is refused, TLS_HOSTNAME=nats passes
    store = tmp_path / "nats"
    tls = (
        "--tls",
        "--tlscert",
        str(only_nats / nats_auth.SERVER_CERT),
        "--tlskey",
        str(only_nats / nats_auth.SERVER_KEY),
    )
    other = EmbeddedNats(store_dir=store, auth_config=server.auth_config, extra_args=tls).start()
    try:
        ca = str(only_nats / nats_auth.CA_CERT)
        assert certificate_refused(await refused(settings(other, nats_tls_ca_file=ca)))
        nc = await connected(settings(other, nats_tls_ca_file=ca, nats_tls_hostname="nats"))
        await nc.close()
    finally:
        other.stop()


async def test_a_plain_client_is_refused(server: EmbeddedNats) -> None:
    """Speaking NATS without TLS, as a client without a CA setting would on a plain server."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        info = json.loads((await reader.readline()).decode().removeprefix("INFO "))
        assert info["tls_required"] is True
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPUB jobs.sweep 2\r\n{}\r\nPING\r\n')
        await writer.drain()
        # the server takes the bytes as a failed TLS handshake and hangs up: no PONG, nothing published
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # until the server closes
        assert b"PONG" not in answer and b"+OK" not in answer, answer
        assert reader.at_eof()
    finally:
        writer.close()


async def test_a_client_trusting_another_ca_is_refused(server: EmbeddedNats, tmp_path: Path) -> None:
    other = nats_auth.write_certificates(tmp_path / "other-ca", ["nats", "127.0.0.1"])
    assert certificate_refused(await refused(settings(server, nats_tls_ca_file=str(other / nats_auth.CA_CERT))))
    # no CA setting: the system's CAs do not know ours either
    assert certificate_refused(await refused(settings(server)))


async def test_faststream_consumers_get_the_same_tls(server: EmbeddedNats, certs: Path) -> None:
    """Consumers connect through FastStream (services/infra/stream_app.py), not connect()."""
    cfg = settings(server, nats_tls_ca_file=str(certs / nats_auth.CA_CERT), nats_tls_hostname="nats")
    servers, options = connect_options(cfg, name="dfm-scheduler", identity="scheduler")
    broker = NatsBroker(servers, max_reconnect_attempts=0, **faststream_auth(options))
    try:
        async with asyncio.timeout(10):
            await broker.connect()
        await broker.publish(b"{}", SUBJECT)
        assert await eventually(lambda: _is_connected(broker), timeout=5)
    finally:
        await broker.stop()


async def _is_connected(broker: NatsBroker) -> bool:
    nc = broker._connection
    return bool(
        nc is not None and nc.is_connected and nc._transport._io_writer.get_extra_info("ssl_object") is not None
    )


def test_half_a_client_certificate_is_a_config_error(certs: Path) -> None:
    cfg = Settings(
        nats_url="nats://127.0.0.1:1",
        nats_tls_ca_file=str(certs / nats_auth.CA_CERT),
        nats_tls_cert_file=str(certs / nats_auth.SERVER_CERT),
    )
    with pytest.raises(ConfigError, match="go together"):
        connect_options(cfg, name="dfm-scheduler")
    with pytest.raises(ConfigError, match="NATS TLS files"):
        connect_options(
            Settings(nats_url="nats://127.0.0.1:1", nats_tls_ca_file=str(certs / "missing.pem")), name="dfm-scheduler"
        )


def test_dfm_nats_certs_writes_a_ca_and_a_server_certificate(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "nats",
            "certs",
            "--out",
            str(out),
            "--host",
            "nats",
            "--host",
            "dfm-nats-1",
            "--host",
            "10.0.0.7",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in (nats_auth.CA_KEY, nats_auth.SERVER_KEY):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
        assert "PRIVATE KEY" not in done.stdout + done.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(out / nats_auth.SERVER_CERT)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:nats" in text and "DNS:dfm-nats-1" in text and "IP Address:10.0.0.7" in text
    ca = (out / nats_auth.CA_CERT).read_bytes()
    # again (renewal, other hosts): the CA stays, so clients' ca.pem keeps working
    again = subprocess.run(
        [sys.executable, "-m", "services.cli", "nats", "certs", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert (out / nats_auth.CA_CERT).read_bytes() == ca
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / nats_auth.CA_CERT), str(out / nats_auth.SERVER_CERT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
