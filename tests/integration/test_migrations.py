"""Migrations: upgrade, downgrade to base and upgrade again; models match the schema."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from services.infra.db import migrate
from services.infra.db.models import Base
from services.infra.db.session import async_url, sync_url
from tests.conftest import create_database, drop_database


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(sync_url(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows} - {"alembic_version"}


def _dfm(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "migrate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_upgrade_downgrade_upgrade_through_the_cli(pg_root_url: str) -> None:
    url = await create_database(pg_root_url)
    try:
        expected = set(Base.metadata.tables)
        up = await asyncio.to_thread(_dfm, "upgrade", "head", url=url)
        assert up.returncode == 0, up.stderr
        assert await _tables(url) == expected
        cur = await asyncio.to_thread(_dfm, "current", url=url)
        assert "(head)" in cur.stdout

        down = await asyncio.to_thread(_dfm, "downgrade", "base", url=url)
        assert down.returncode == 0, down.stderr
        assert await _tables(url) == set()
        assert (await asyncio.to_thread(_dfm, "current", url=url)).stdout.strip() == "base"

        again = await asyncio.to_thread(_dfm, "upgrade", "head", url=url)
        assert again.returncode == 0, again.stderr
        assert await _tables(url) == expected
    finally:
        await drop_database(pg_root_url, url)


async def test_autogenerate_reports_no_difference_from_the_models(database_url: str) -> None:
    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync_conn: compare_metadata(
                    MigrationContext.configure(sync_conn, opts={"compare_type": True, "compare_server_default": True}),
                    Base.metadata,
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_every_revision_has_a_working_downgrade(pg_root_url: str) -> None:
    from alembic.script import ScriptDirectory

    url = await create_database(pg_root_url)
    try:
        script = ScriptDirectory.from_config(migrate.alembic_config(url))
        revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
        for rev in revisions:
            await asyncio.to_thread(migrate.upgrade, url, rev)
            await asyncio.to_thread(migrate.downgrade, url, "-1")
            await asyncio.to_thread(migrate.upgrade, url, rev)
        assert await _tables(url) == set(Base.metadata.tables)
    finally:
        await drop_database(pg_root_url, url)


async def test_unique_dedupe_key_is_enforced(clean_db: str) -> None:
    conn = await asyncpg.connect(sync_url(clean_db))
    try:
        insert = (
            "INSERT INTO webhook_events (source, event_type, event_token, canonical_type, "
            "entity_type, entity_id, payload_json, dedupe_key) "
            "VALUES ('ghl','ContactUpdate','contact_update','contact.updated','contact','c1',"
            "'{}'::jsonb, $1) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
        )
        first = await conn.fetchval(insert, "ghl:wh:1")
        second = await conn.fetchval(insert, "ghl:wh:1")
    finally:
        await conn.close()
    assert first is not None
    assert second is None
