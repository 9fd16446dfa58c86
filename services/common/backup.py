"""``dfm backup`` / ``dfm restore``: the database (pg_dump custom format) and the WEBHOOKS
stream (JSON lines: sequence, subject, time, headers, body) in one directory per backup.

A restore loads the dump into the target database, re-publishes the stream's messages in
their original order with their original headers (``Nats-Msg-Id`` included), and maps the
event rows' ``stream_seq`` from the old sequences to the new ones, so replays by sequence
and ``dfm trace`` keep working. Older backups beyond ``DFM_BACKUP_RETENTION`` are removed.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from nats.js.errors import NotFoundError

from contracts.streams import WEBHOOKS_STREAM
from services.common.broker import connect, ensure_topology
from services.common.db.session import sync_url
from services.common.settings import Settings

DUMP = "database.dump"
STREAM = "webhooks.jsonl"
MANIFEST = "manifest.json"


def pg_tool(name: str) -> str:
    """``pg_dump``/``pg_restore``: the ones shipped with the embedded PostgreSQL wheel when
    installed (newest), else the system's."""
    try:
        import pgserver

        candidate = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found (install the PostgreSQL client tools)")
    return found


@dataclass
class BackupReport:
    path: Path
    messages: int
    database_bytes: int


async def backup(settings: Settings, root: Path, *, retention: int) -> BackupReport:
    target = root / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target.mkdir(parents=True)
    subprocess.run([pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={target / DUMP}",
                    f"--dbname={sync_url(settings.database_url_str)}"], check=True, capture_output=True)
    messages = await export_stream(settings, target / STREAM)
    (target / MANIFEST).write_text(json.dumps({
        "created_at": datetime.now(UTC).isoformat(), "stream": WEBHOOKS_STREAM, "messages": messages,
        "database": DUMP}, indent=2))
    _prune(root, retention)
    return BackupReport(target, messages, (target / DUMP).stat().st_size)


async def export_stream(settings: Settings, path: Path) -> int:
    nc = await connect(settings, name="dfm-backup", max_reconnect_attempts=2)
    count = 0
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(WEBHOOKS_STREAM)
        except NotFoundError:
            path.write_text("")
            return 0
        with path.open("w") as out:
            seq = info.state.first_seq
            while seq and seq <= info.state.last_seq:
                try:
                    msg = await js.get_msg(WEBHOOKS_STREAM, seq)
                except NotFoundError:  # deleted or aged out inside the range
                    seq += 1
                    continue
                out.write(json.dumps({"seq": msg.seq, "subject": msg.subject, "headers": msg.headers or {},
                                      "data": base64.b64encode(msg.data or b"").decode()}) + "\n")
                count += 1
                seq += 1
    finally:
        await nc.close()
    return count


async def restore(settings: Settings, source: Path) -> dict[str, Any]:
    if not (source / DUMP).exists():
        raise RuntimeError(f"{source} has no {DUMP}: not a dfm backup directory")
    result = subprocess.run([pg_tool("pg_restore"), "--no-owner", "--clean", "--if-exists", "--exit-on-error",
                             f"--dbname={sync_url(settings.database_url_str)}", str(source / DUMP)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pg_restore failed: {result.stderr.strip()[-500:]}")
    renumbered = await import_stream(settings, source / STREAM)
    conn = await asyncpg.connect(sync_url(settings.database_url_str))
    try:
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE seq_map (old bigint PRIMARY KEY, new bigint) ON COMMIT DROP")
            await conn.copy_records_to_table("seq_map", records=list(renumbered.items()))
            for table in ("webhook_events", "texting_webhook_events", "broadcast_webhook_events"):
                await conn.execute(f"UPDATE {table} t SET stream_seq = m.new FROM seq_map m WHERE t.stream_seq = m.old")
    finally:
        await conn.close()
    return {"messages": len(renumbered)}


async def import_stream(settings: Settings, path: Path) -> dict[int, int]:
    """Publish the exported messages again, in order; old sequence → new sequence."""
    nc = await connect(settings, name="dfm-restore", max_reconnect_attempts=2)
    mapping: dict[int, int] = {}
    try:
        js = nc.jetstream(timeout=10)
        await ensure_topology(js, settings)
        if path.exists():
            for line in path.read_text().splitlines():
                item = json.loads(line)
                ack = await js.publish(item["subject"], base64.b64decode(item["data"]),
                                       headers=item["headers"] or None)
                mapping[int(item["seq"])] = int(ack.seq)
    finally:
        await nc.close()
    return mapping


def _prune(root: Path, retention: int) -> None:
    backups = sorted(p for p in root.iterdir() if p.is_dir() and ((p / MANIFEST).exists() or (p / DUMP).exists()))
    for old in backups[: max(0, len(backups) - retention)]:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["backup", "restore"]
