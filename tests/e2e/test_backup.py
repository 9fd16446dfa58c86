"""``dfm backup`` then ``dfm restore`` into an empty database and an empty NATS server
reproduces the rows and the stream's messages, and the restored events can be replayed; in
the clear or encrypted. A backup holds every payload, so (security-audit F16): the password
never reaches a tool's command line, directories are 0700 and files 0600, the default place is
outside the repository, and only tools of the server's major version are used.

pg_dump and pg_restore are observed through a wrapper script put first on PATH: a real process
that writes down its arguments and environment, then runs the real tool."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from services.infra.db.session import sync_url
from services.tooling.embedded import EmbeddedNats
from tests.conftest import create_database, drop_database
from tests.support.contacts import aloware_contact, send_aloware
from tests.support.jobs import all_in, cli
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline

ROOT = Path(__file__).resolve().parents[2]

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
        return [
            ((m := await js.get_msg("WEBHOOKS", seq)).subject, m.headers or {}, m.data or b"")
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


@pytest.fixture
async def empty_target(pg_root_url: str, tmp_path: Path) -> Any:
    db = await create_database(pg_root_url)
    server = EmbeddedNats(store_dir=tmp_path / "nats-restore").start()
    yield db, server.url
    server.stop()
    await drop_database(pg_root_url, db)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_backup_then_restore_reproduces_rows_and_messages(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, empty_target: Any, encrypted: bool
) -> None:
    backup_key = Fernet.generate_key().decode()
    if encrypted:
        base_env = {**base_env, "DFM_BACKUP_KEY": backup_key}
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
    if encrypted:
        assert made.stdout.rstrip().endswith(", encrypted")
        assert sorted(p.name for p in kept[-1].iterdir()) == [
            "database.dump.enc",
            "manifest.json",
            "webhooks.jsonl.enc",
        ]
        sealed = b"".join(p.read_bytes() for p in kept[-1].iterdir())
        assert b"Dfm-Event-Id" not in sealed and b"webhook_events" not in sealed  # nothing in the clear
        wrong = cli({**target_env, "DFM_BACKUP_KEY": Fernet.generate_key().decode()}, "restore", str(kept[-1]), "--yes")
        assert wrong.returncode == 1 and len(errors(wrong)) == 1, wrong.stderr
        assert "does not decrypt with DFM_BACKUP_KEY" in errors(wrong)[0]
        assert await fetch(target_db, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'") == [{"n": 0}]
        # after a key rotation (a new key first) the backup still restores with the old one listed
        target_env = {**target_env, "DFM_BACKUP_KEY": f"{Fernet.generate_key().decode()},{backup_key}"}
    restored = cli(target_env, "restore", str(kept[-1]), "--yes")
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


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The CLI's error lines (a library's warnings may share stderr)."""
    return [line for line in result.stderr.splitlines() if line.startswith("dfm: error:")]


async def _quiet(db: str) -> bool:
    found = await fetch(db, "SELECT count(*) AS n FROM webhook_events WHERE status NOT IN ('done', 'dead')")
    return found[0]["n"] == 0


# --- the password, file modes, the default place, the tools' version ---------------------------
async def server_major(url: str) -> int:
    conn = await asyncpg.connect(sync_url(url))
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


def tool_dirs() -> dict[int, Path]:
    """Real PostgreSQL client tool directories on this machine, by major version."""
    import pgserver

    found: dict[int, Path] = {}
    places = [*sorted(Path("/usr/lib/postgresql").glob("*/bin")), Path(pgserver.__file__).parent / "pginstall" / "bin"]
    for place in places:
        if (place / "pg_dump").exists():
            out = subprocess.run([str(place / "pg_dump"), "--version"], capture_output=True, text=True).stdout
            found.setdefault(int(out.split(")")[1].split(".")[0]), place)
    return found


def recording_tools(bin_dir: Path, real: Path, log: Path) -> None:
    """``pg_dump``/``pg_restore`` in ``bin_dir`` that append their argv, whether PGPASSWORD is
    set and the passfile's mode to ``log``, then exec the real tool from ``real``."""
    bin_dir.mkdir()
    for name in ("pg_dump", "pg_restore"):
        script = bin_dir / name
        script.write_text(f"""#!/bin/sh
{{ printf '{name}'; for a in "$@"; do printf ' %s' "$a"; done; printf '\\n'
  [ -n "${{PGPASSWORD+x}}" ] && echo "PGPASSWORD=$PGPASSWORD"
  [ -n "$PGPASSFILE" ] && echo "passfile $(stat -c %a "$PGPASSFILE") in $(stat -c %a "$(dirname "$PGPASSFILE")")"
}} >> {log}
exec {real / name} "$@"
""")
        script.chmod(0o755)


@pytest.fixture
async def password_role(pg_root_url: str) -> Any:
    """A superuser with a password (the machine's server may trust loopback, so this only
    makes sure a password exists to be leaked); dropped afterwards."""
    name, password = f"dfm_backup_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(12)}"
    conn = await asyncpg.connect(sync_url(pg_root_url))
    try:
        await conn.execute(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'")
        yield name, password
    finally:
        await conn.execute(f"DROP ROLE IF EXISTS {name}")
        await conn.close()


def as_role(url: str, role: tuple[str, str]) -> str:
    return make_url(url).set(username=role[0], password=role[1]).render_as_string(hide_password=False)


async def test_the_password_never_reaches_a_tool_command_line(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, password_role: tuple[str, str], empty_target: Any
) -> None:  # password_role first: it is dropped after the target database that holds its objects
    major = await server_major(clean_db)
    real = tool_dirs().get(major)
    if real is None:
        pytest.skip(f"no PostgreSQL {major} client tools on this machine")
    log = tmp_path / "argv.log"
    recording_tools(tmp_path / "bin", real, log)
    path = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    env = {
        **base_env,
        "DATABASE_URL": as_role(clean_db, password_role),
        "PATH": path,
        "PGPASSWORD": "inherited-not-ours",
    }
    made = cli(env, "backup", "--dir", str(tmp_path / "backups"))
    assert made.returncode == 0, made.stderr
    target_db, target_nats = empty_target
    restored = cli(
        {**env, "DATABASE_URL": as_role(target_db, password_role), "NATS_URL": target_nats},
        "restore",
        str(next((tmp_path / "backups").iterdir())),
        "--yes",
    )
    assert restored.returncode == 0, restored.stderr
    recorded = log.read_text()
    assert recorded.startswith("pg_dump ") and "\npg_restore " in recorded, recorded  # the wrappers ran
    assert password_role[1] not in recorded, recorded
    assert "PGPASSWORD" not in recorded  # an inherited one would override the passfile
    assert recorded.count("passfile 600 in 700") >= 2, recorded
    assert password_role[1] not in made.stdout + made.stderr + restored.stdout + restored.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_backups_are_private_and_by_default_outside_the_repository(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**base_env, "HOME": str(home)}
    made = cli(env, "backup")  # no --dir, no DFM_BACKUP_DIR, no XDG_STATE_HOME
    assert made.returncode == 0, made.stderr
    root = home / ".local" / "state" / "dfm" / "backups"
    [backup] = list(root.iterdir())
    assert str(backup) in made.stdout and not backup.resolve().is_relative_to(ROOT)
    assert mode(root) == 0o700 and mode(backup) == 0o700
    assert {p.name: mode(p) for p in backup.iterdir()} == {
        "database.dump": 0o600,
        "webhooks.jsonl": 0o600,
        "manifest.json": 0o600,
    }
    # XDG_STATE_HOME wins over HOME; DFM_BACKUP_DIR over both
    state = tmp_path / "state"
    assert cli({**env, "XDG_STATE_HOME": str(state)}, "backup").returncode == 0
    assert len(list((state / "dfm" / "backups").iterdir())) == 1
    # a relative DFM_BACKUP_DIR=backups (the old default) is ignored by git
    ignored = subprocess.run(["git", "check-ignore", "-q", "backups/20250101T000000Z/database.dump"], cwd=ROOT)
    assert ignored.returncode == 0


async def test_tools_of_another_major_version_are_refused_with_a_clear_error(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    major = await server_major(clean_db)
    others = {v: p for v, p in tool_dirs().items() if v != major}
    if not others:
        pytest.skip(f"only PostgreSQL {major} client tools on this machine")
    version, other = next(iter(others.items()))
    made = cli({**base_env, "DFM_PG_BIN_DIR": str(other)}, "backup", "--dir", str(tmp_path / "backups"))
    assert made.returncode == 1 and len(errors(made)) == 1, made.stderr
    [error] = errors(made)
    assert f"PostgreSQL {major}" in error and f"PostgreSQL {version}" in error, error
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())


def test_the_restore_question_names_what_it_replaces_without_credentials() -> None:
    from services.infra.settings import Settings
    from services.tooling.backup import describe_target

    settings = Settings(
        database_url="postgresql://dfm:s3cret-db-pw@db.internal:5433/dfm_prod",
        nats_url=["nats://ops:s3cret-nats-pw@nats-1:4222", "tls://nats-2:4222"],
    )
    target = describe_target(settings)
    assert target == (
        "the database dfm_prod on db.internal:5433 and the WEBHOOKS stream on nats://nats-1:4222, tls://nats-2:4222"
    )
    assert "s3cret" not in target
