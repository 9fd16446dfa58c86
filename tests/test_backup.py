"""``dfm backup`` then ``dfm restore`` into an empty database and an empty NATS server
reproduces the rows and the stream's messages, and the restored events can be replayed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import pytest

from services.common.embedded import EmbeddedNats
from tests.conftest import create_database, drop_database
from tests.jobs_rig import fetch
from tests.sync_rig import eventually, pipeline_settings, running_pipeline
from tests.test_contact_sync import aloware_contact, send_aloware
from tests.test_jobs import all_in, cli

TABLES = ("webhook_events", "event_deliveries", "contact_mappings", "sync_log", "event_attempts")


async def rows(db: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table in TABLES:
        out[table] = await fetch(db, f"SELECT * FROM {table} ORDER BY 1, 2")
    return out


async def messages(url: str) -> list[tuple[str, dict[str, str], bytes]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("WEBHOOKS")
        return [((m := await js.get_msg("WEBHOOKS", seq)).subject, m.headers or {}, m.data or b"")
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


@pytest.fixture
async def empty_target(pg_root_url: str, tmp_path: Path) -> Any:
    db = await create_database(pg_root_url)
    server = EmbeddedNats(store_dir=tmp_path / "nats-restore").start()
    yield db, server.url
    server.stop()
    await drop_database(pg_root_url, db)


async def test_backup_then_restore_reproduces_rows_and_messages(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, empty_target: Any
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        ids = [(await send_aloware(p, aloware_contact(n)))["id"] for n in (701, 702, 703)]
        await eventually(lambda: all_in(clean_db, ids, "done"))
        await eventually(lambda: _quiet(clean_db))
    before_rows, before_messages = await rows(clean_db), await messages(base_env["NATS_URL"])
    backups = tmp_path / "backups"
    for _ in range(3):  # retention keeps the newest two
        made = cli(base_env, "backup", "--dir", str(backups), "--keep", "2")
        assert made.returncode == 0, made.stderr
    kept = sorted(backups.iterdir())
    assert len(kept) == 2 and f"{len(before_messages)} stream messages" in made.stdout

    target_db, target_nats = empty_target
    target_env = {**base_env, "DATABASE_URL": target_db, "NATS_URL": target_nats}
    restored = cli(target_env, "restore", str(kept[-1]))
    assert restored.returncode == 0, restored.stderr
    assert await rows(target_db) == before_rows
    after = await messages(target_nats)
    assert [(s, h, d) for s, h, d in after] == before_messages
    # the restored events replay: stream sequences in the rows point at the restored messages
    [row] = await fetch(target_db, "SELECT stream_seq FROM webhook_events WHERE id = $1::uuid", ids[0])
    nc = await nats.connect(target_nats)
    try:
        msg = await nc.jetstream().get_msg("WEBHOOKS", row["stream_seq"])
    finally:
        await nc.close()
    assert msg.headers["Dfm-Event-Id"] == ids[0]
    dry = cli(target_env, "replay", "--subject", "webhooks.aloware.>", "--dry-run")
    assert dry.returncode == 0 and "would replay 3" in dry.stdout, dry.stdout + dry.stderr


async def _quiet(db: str) -> bool:
    found = await fetch(db, "SELECT count(*) AS n FROM webhook_events WHERE status NOT IN ('done', 'dead')")
    return found[0]["n"] == 0
