"""``dfm backup`` / ``dfm restore`` on a stream of 20,000 messages (issue #20): the export reads
the WEBHOOKS stream in batches through a pull consumer (the backup's connection sends a few
hundred requests, not one ``MSG.GET`` per message), the restore streams the file (plain or
encrypted) line by line, so the memory either takes stays far below the file's size
(tracemalloc), and the rows' stream sequences are remapped across gaps in the old stream.
Both show progress (a bar on a terminal, a line every N messages without one) and end with a
summary line; ``dfm restore`` asks before it replaces anything, or takes ``--yes``.

Terminal runs go through a real pseudo-terminal (``pty``) the CLI process writes to and reads
its answer from."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import tracemalloc
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from cryptography.fernet import Fernet
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.engine import make_url

from services.infra.broker import apply_topology, connect
from services.infra.db.session import sync_url
from services.infra.nats_auth import ADMIN
from services.infra.settings import Settings
from services.tooling.backup import backup, restore
from services.tooling.embedded import EmbeddedNats, free_port
from tests.conftest import create_database, drop_database
from tests.support.jobs import cli
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import eventually
from tests.support.terminal import on_a_terminal

MESSAGES = 20_000
BODY = 1024
# bytes tracemalloc may see at peak (the stream file is > 25 MiB); encrypted, Fernet makes a
# handful of copies of one 1 MiB chunk
MEMORY_BOUND = {False: 8 << 20, True: 12 << 20}
SUBJECTS = ("webhooks.aloware.contact.updated", "webhooks.ghl.contact.updated", "webhooks.verity.message.sent")


@dataclass
class Nats:
    server: EmbeddedNats
    monitor: int

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[Nats]:
    """A NATS server of its own with the monitoring port on (``/connz`` shows what the
    backup's connection sent) and the shipped topology."""
    monitor = free_port()
    server = EmbeddedNats(store_dir=tmp_path / "nats-source", extra_args=("-m", str(monitor))).start()
    nc = await nats.connect(server.url)
    try:
        await apply_topology(nc.jetstream(), Settings(nats_url=[server.url]))
    finally:
        await nc.close()
    yield Nats(server, monitor)
    server.stop()


@pytest.fixture
async def target(pg_root_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """An empty database and an empty NATS server to restore into."""
    db = await create_database(pg_root_url)
    server = EmbeddedNats(store_dir=tmp_path / "nats-target").start()
    yield db, server.url
    server.stop()
    await drop_database(pg_root_url, db)


def body(n: int) -> bytes:
    """``BODY`` bytes that differ per message and do not compress."""
    out = b""
    while len(out) < BODY:
        out += hashlib.sha256(f"{n}:{len(out)}".encode()).digest()
    return out[:BODY]


async def fill(url: str, count: int, *, deleted: tuple[range, ...] = ()) -> dict[int, str]:
    """``count`` messages with ids and bodies of their own, then ``deleted`` sequences removed;
    the event id (``Dfm-Event-Id``) by stream sequence of the messages left."""
    nc = await nats.connect(url)
    ids: dict[int, str] = {}
    try:
        js = nc.jetstream(timeout=30)
        pending = []
        for n in range(count):
            event_id = str(uuid.uuid4())
            pending.append(
                (
                    event_id,
                    await js.publish_async(
                        SUBJECTS[n % len(SUBJECTS)],
                        body(n),
                        headers={"Nats-Msg-Id": f"bk:{event_id}", "Dfm-Event-Id": event_id},
                    ),
                )
            )
        for event_id, future in pending:
            ids[(await future).seq] = event_id
        for gap in deleted:
            for seq in gap:
                await js.delete_msg("WEBHOOKS", seq)
                del ids[seq]
    finally:
        await nc.close()
    return ids


async def contents(url: str) -> list[tuple[str, dict[str, str], str]]:
    """Every message of WEBHOOKS in order: (subject, headers, sha256 of the body)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info("WEBHOOKS")).state.messages
        sub = await js.pull_subscribe(
            "",
            stream="WEBHOOKS",
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, filter_subjects=["webhooks.>"]
            ),
        )
        found: list[tuple[str, dict[str, str], str]] = []
        while len(found) < total:
            for msg in await sub.fetch(500, timeout=10):
                found.append((msg.subject, dict(msg.headers or {}), hashlib.sha256(msg.data).hexdigest()))
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def stream_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info("WEBHOOKS")).state.messages)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


async def add_rows(db: str, ids: dict[int, str], seqs: list[int]) -> None:
    """webhook_events rows pointing at the messages ``seqs`` (their id is the message's)."""
    conn = await asyncpg.connect(sync_url(db))
    try:
        await conn.executemany(
            "INSERT INTO webhook_events (id, source, event_type, event_token, canonical_type, entity_type,"
            " entity_id, payload_json, dedupe_key, stream_seq, status)"
            " VALUES ($1::uuid, 'aloware', 'contact.updated', 't', 'contact.updated', 'contact', $2, '{}',"
            " $3, $4, 'done')",
            [(ids[seq], str(seq), f"k:{seq}", seq) for seq in seqs],
        )
    finally:
        await conn.close()


async def pointed_at(db: str, url: str) -> list[tuple[str, str]]:
    """(row id, the Dfm-Event-Id of the message its stream_seq points at) for every row."""
    found = await fetch(db, "SELECT id::text AS id, stream_seq FROM webhook_events ORDER BY stream_seq")
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return [
            (r["id"], ((await js.get_msg("WEBHOOKS", r["stream_seq"])).headers or {}).get("Dfm-Event-Id", ""))
            for r in found
        ]
    finally:
        await nc.close()


def settings_of(env: dict[str, str]) -> Settings:
    fields: dict[str, Any] = {k.lower(): v for k, v in env.items()}  # as the environment gives them
    return Settings(**fields)


def backup_connection_requests(monitor: int) -> list[int]:
    """Messages each closed ``dfm-backup`` connection sent to the server (its requests)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz?state=closed&limit=1024", timeout=5) as resp:
        conns = json.load(resp)["connections"] or []
    return [c["in_msgs"] for c in conns if c.get("name") == "dfm-backup"]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_a_large_stream_backs_up_in_batches_and_restores_in_bounded_memory(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, source: Nats, target: tuple[str, str], encrypted: bool
) -> None:
    # gaps: the oldest messages aged out and a run deleted in the middle, so old and new
    # sequences differ by a different amount on each side of the gap
    ids = await fill(source.url, MESSAGES, deleted=(range(1, 11), range(5_000, 5_100)))
    rows = [11, 12, 4_999, 5_100, 5_101, 12_345, MESSAGES - 1, MESSAGES]
    await add_rows(clean_db, ids, rows)
    before = await contents(source.url)
    assert len(before) == MESSAGES - 110
    env = {**base_env, "NATS_URL": source.url}
    if encrypted:
        env["DFM_BACKUP_KEY"] = Fernet.generate_key().decode()

    tracemalloc.start()
    try:
        report = await backup(settings_of(env), tmp_path / "backups", retention=2)
        _, backup_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        target_db, target_nats = target
        restored = await restore(settings_of({**env, "DATABASE_URL": target_db, "NATS_URL": target_nats}), report.path)
        _, restore_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    [stream_file] = [p for p in report.path.iterdir() if p.name.startswith("webhooks.jsonl")]
    size = stream_file.stat().st_size
    print(
        f"\n{'encrypted' if encrypted else 'plain'}: stream file {size / 2**20:.1f} MiB; tracemalloc peak "
        f"backup {backup_peak / 2**20:.1f} MiB, restore {restore_peak / 2**20:.1f} MiB"
    )
    assert size > 25 << 20
    assert report.messages == restored.messages == MESSAGES - 110
    assert backup_peak < MEMORY_BOUND[encrypted], backup_peak
    assert restore_peak < MEMORY_BOUND[encrypted], restore_peak
    # batched: one request per batch (and a few API calls), not one MSG.GET per message
    [requests] = await eventually(lambda: _async(backup_connection_requests(source.monitor)))
    assert requests < MESSAGES / 50, requests
    # the same messages in the same order, and every row points at its message again
    assert await contents(target_nats) == before
    assert [row_id for row_id, _ in await pointed_at(target_db, target_nats)] == [ids[s] for s in rows]
    assert all(row_id == event_id for row_id, event_id in await pointed_at(target_db, target_nats))
    assert [r["stream_seq"] for r in await fetch(target_db, "SELECT stream_seq FROM webhook_events ORDER BY 1")] == [
        1,
        2,
        4_989,
        4_990,
        4_991,
        12_235,
        MESSAGES - 111,
        MESSAGES - 110,
    ]


async def _async(value: Any) -> Any:
    return value


# --- the CLI: progress, summary, confirmation ----------------------------------------------------
SMALL = 1_200
SUMMARY_BACKUP = re.compile(
    rf"^backup (\S+): database \d+ bytes, {SMALL} stream messages \((\d+) bytes\) in \d+\.\d s$"
)
SUMMARY_RESTORE = re.compile(rf"^restored (\S+): database and {SMALL} stream messages \((\d+) bytes\) in \d+\.\d s$")


def plain(terminal_output: str) -> list[str]:
    """The lines a terminal shows in the end: colours and cursor codes removed, each line the
    last of its carriage-return redraws."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal_output)
    return [
        line.rsplit("\r", 1)[-1].strip()
        for line in text.replace("\r\n", "\n").splitlines()
        if line.rsplit("\r", 1)[-1].strip()
    ]


def progress_counts(stderr: str, command: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(rf"^dfm {command}: (\d+) of {SMALL} messages, ", stderr, re.M)]


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("dfm: error:")]


async def public_tables(db: str) -> int:
    return int((await fetch(db, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'"))[0]["n"])


async def test_without_a_terminal_progress_is_a_line_every_n_and_restore_needs_yes(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, source: Nats, target: tuple[str, str]
) -> None:
    await fill(source.url, SMALL)
    env = {**base_env, "NATS_URL": source.url}
    made = cli(env, "backup", "--dir", str(tmp_path / "backups"), "--progress-every", "500")
    assert made.returncode == 0, made.stderr
    assert progress_counts(made.stderr, "backup") == [500, 1000], made.stderr
    summary = SUMMARY_BACKUP.match(made.stdout.splitlines()[-1])
    assert summary, made.stdout
    path = Path(summary.group(1))
    assert int(summary.group(2)) == (path / "webhooks.jsonl").stat().st_size

    target_db, target_nats = target
    target_env = {**env, "DATABASE_URL": target_db, "NATS_URL": target_nats}
    refused = cli(target_env, "restore", str(path))
    assert refused.returncode == 2 and len(errors(refused)) == 1, refused.stderr
    assert "--yes" in errors(refused)[0] and "no terminal" in errors(refused)[0], errors(refused)
    assert await public_tables(target_db) == 0 and await stream_messages(target_nats) == 0

    restored = cli(target_env, "restore", str(path), "--yes", "--progress-every", "500")
    assert restored.returncode == 0, restored.stderr
    assert progress_counts(restored.stderr, "restore") == [500, 1000], restored.stderr
    done = SUMMARY_RESTORE.match(restored.stdout.splitlines()[-1])
    assert done and int(done.group(2)) == int(summary.group(2)), restored.stdout
    assert await stream_messages(target_nats) == SMALL and await public_tables(target_db) > 0


async def test_on_a_terminal_progress_is_a_bar_and_restore_asks_first(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, source: Nats, target: tuple[str, str]
) -> None:
    await fill(source.url, SMALL)
    env = {**base_env, "NATS_URL": source.url}
    code, out = on_a_terminal(env, "backup", "--dir", str(tmp_path / "backups"), "--progress-every", "500")
    assert code == 0, out
    assert f"{SMALL}/{SMALL}" in out and "msg/s" in out and "━" in out, out  # count, rate, the bar
    assert "of 1200 messages" not in out  # no progress lines on a terminal
    summary = SUMMARY_BACKUP.match(plain(out)[-1])
    assert summary, out
    path = summary.group(1)

    target_db, target_nats = target
    target_env = {**env, "DATABASE_URL": target_db, "NATS_URL": target_nats}
    code, out = on_a_terminal(target_env, "restore", path, answer="n")
    assert code == 1, out
    replaced = make_url(target_db)
    where = replaced.query.get("host") or f"{replaced.host or 'localhost'}:{replaced.port or 5432}"
    # it names the database it replaces, and where that database lives (a socket directory or host:port)
    assert "[y/N]" in out and f"database {replaced.database} on {where} " in out, out
    assert await public_tables(target_db) == 0 and await stream_messages(target_nats) == 0

    code, out = on_a_terminal(target_env, "restore", path, answer="y")
    assert code == 0, out
    assert f"{SMALL}/{SMALL}" in out and "msg/s" in out, out
    assert SUMMARY_RESTORE.match(plain(out)[-1]), out
    assert await stream_messages(target_nats) == SMALL and await public_tables(target_db) > 0


# --- `nats stream backup` / `nats stream restore` (deploy/README.md) need the admin identity ----
async def snapshot(nc: NatsClient, stream: str) -> tuple[dict[str, Any], bytes]:
    """What ``nats stream backup`` does: ``STREAM.SNAPSHOT`` with a deliver inbox, each chunk
    acknowledged on its ``$JS.SNAPSHOT.ACK…`` reply, an empty message at the end. (the
    stream's config and state, the snapshot's bytes)."""
    inbox = nc.new_inbox()
    chunks: list[bytes] = []
    done = asyncio.get_running_loop().create_future()

    async def take(msg: Any) -> None:
        if not msg.data:
            done.set_result(None)
            return
        chunks.append(msg.data)
        if msg.reply:
            await nc.publish(msg.reply, b"")

    sub = await nc.subscribe(inbox, cb=take)
    try:
        answer = json.loads(
            (
                await nc.request(
                    f"$JS.API.STREAM.SNAPSHOT.{stream}",
                    json.dumps({"deliver_subject": inbox, "chunk_size": 64 * 1024}).encode(),
                    timeout=5,
                )
            ).data
        )
        assert "error" not in answer, answer
        await asyncio.wait_for(done, 30)
    finally:
        await sub.unsubscribe()
    return {"config": answer["config"], "state": answer["state"]}, b"".join(chunks)


async def restore_snapshot(nc: NatsClient, stream: str, meta: dict[str, Any], data: bytes) -> dict[str, Any]:
    """What ``nats stream restore`` does: ``STREAM.RESTORE`` answers a ``$JS.SNAPSHOT.RESTORE…``
    subject the chunks are sent to as requests, an empty one last."""
    answer = json.loads(
        (await nc.request(f"$JS.API.STREAM.RESTORE.{stream}", json.dumps(meta).encode(), timeout=5)).data
    )
    assert "error" not in answer, answer
    for start in range(0, len(data), 64 * 1024):
        await nc.request(answer["deliver_subject"], data[start : start + 64 * 1024], timeout=5)
    return dict(json.loads((await nc.request(answer["deliver_subject"], b"", timeout=30)).data))


async def test_the_admin_identity_can_snapshot_and_restore_the_stream_as_the_nats_cli_does(
    base_env: dict[str, str], nats_server: EmbeddedNats
) -> None:
    await fill(nats_server.url, 300)
    settings = settings_of(base_env)
    violations: list[str] = []

    async def noted(exc: Exception) -> None:
        violations.append(str(exc))

    admin = await connect(settings, name="dfm-topology", identity=ADMIN, error_cb=noted)
    try:
        meta, data = await snapshot(admin, "WEBHOOKS")
        before = await contents(nats_server.url)
        await admin.jetstream().delete_stream("WEBHOOKS")
        restored = await restore_snapshot(admin, "WEBHOOKS", meta, data)
    finally:
        await admin.close()
    assert violations == []
    assert "error" not in restored and restored["state"]["messages"] == 300, restored
    assert await contents(nats_server.url) == before  # messages, headers and order kept
