"""``dfm backup`` / ``dfm restore``: the database (pg_dump custom format) and the WEBHOOKS
stream (JSON lines: sequence, subject, time, headers, body) in one directory per backup.

A restore loads the dump into the target database, re-publishes the stream's messages in
their original order with their original headers (``Nats-Msg-Id`` included), and maps the
event rows' ``stream_seq`` from the old sequences to the new ones, so replays by sequence
and ``dfm trace`` keep working. Older backups beyond ``DFM_BACKUP_RETENTION`` are removed.

A backup holds every payload (message bodies, phone numbers, raw GHL bodies), so (security
audit F16): the database password reaches pg_dump/pg_restore through a private passfile,
never the command line other users can read in ``ps``; directories are ``0700`` and files
``0600``; the default place is the user's state directory, not the working tree; the tools are
the ones of the server's major version (the pgserver wheel's 16.2 predates pg_dump fixes);
and with ``DFM_BACKUP_KEY`` both files are encrypted (:class:`EncryptingWriter`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from nats.js.errors import NotFoundError
from sqlalchemy.engine import URL, make_url

from contracts.streams import WEBHOOKS_STREAM
from services.infra.broker import connect, ensure_topology
from services.infra.db.session import sync_url
from services.infra.nats_auth import ADMIN
from services.infra.settings import Settings

DUMP = "database.dump"
STREAM = "webhooks.jsonl"
MANIFEST = "manifest.json"
ENCRYPTED = ".enc"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; ``str()`` is one line for the operator."""


# --- where ---------------------------------------------------------------------------------
def default_backup_dir() -> Path:
    """``$XDG_STATE_HOME/dfm/backups``, else ``~/.local/state/dfm/backups``: per user, outside
    any checkout (a relative ``backups/`` used to land in the repository, un-ignored)."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "dfm" / "backups"


def backup_root(settings: Settings, given: Path | None = None) -> Path:
    """``--dir``, else ``DFM_BACKUP_DIR``, else :func:`default_backup_dir`."""
    return given or (Path(settings.dfm_backup_dir) if settings.dfm_backup_dir else default_backup_dir())


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0700; tighten it if it exists."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)


@contextlib.contextmanager
def _private_files() -> Iterator[None]:
    """umask 077 for what this process and its children (pg_dump) create meanwhile. The umask
    is per process: backups run in the one-shot CLI, where nothing else is creating files."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


# --- which tools -----------------------------------------------------------------------------
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def tool_major(path: str) -> int | None:
    """The major version ``path --version`` reports (``pg_dump (PostgreSQL) 15.20 …`` → 15)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False,
                             env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}).stdout  # no secrets, no l10n
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _VERSION.search(out)
    return int(found.group(1)) if found else None


def _candidates(name: str, major: int, settings: Settings) -> list[Path]:
    if settings.dfm_pg_bin_dir:
        return [Path(settings.dfm_pg_bin_dir) / name]
    found: list[Path] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory:
            found.append(Path(directory) / name)
    found += [Path(f"/usr/lib/postgresql/{major}/bin") / name, Path(f"/usr/pgsql-{major}/bin") / name]
    try:
        import pgserver  # the embedded server's wheel (dev and tests)

        found.append(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)
    except ImportError:
        pass
    return found


def pg_tool(name: str, major: int, settings: Settings) -> str:
    """``pg_dump``/``pg_restore`` of the server's major version: ``DFM_PG_BIN_DIR`` only when
    set, else the first match on PATH, in ``/usr/lib/postgresql/<major>/bin`` (Debian),
    ``/usr/pgsql-<major>/bin`` (RHEL), then the pgserver wheel. An older pg_dump cannot dump a
    newer server, and a newer one is not what the server's own packages patch; so another
    major is an error that says what was found."""
    seen: dict[str, int | None] = {}
    for candidate in _candidates(name, major, settings):
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        real = str(candidate.resolve())
        if real in seen:
            continue
        seen[real] = tool_major(str(candidate))
        if seen[real] == major:
            return str(candidate)
    others = ", ".join(f"{path} (PostgreSQL {version or '?'})" for path, version in seen.items()) or "none"
    where = f"in DFM_PG_BIN_DIR={settings.dfm_pg_bin_dir}" if settings.dfm_pg_bin_dir else "on PATH or beside it"
    raise BackupError(f"the server runs PostgreSQL {major} but no {name} {major} was found {where} "
                      f"(found: {others}); install postgresql-client-{major} or set DFM_PG_BIN_DIR")


async def server_major(url: str) -> int:
    """``SHOW server_version_num`` // 10000."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


# --- how to connect without a password on the command line ----------------------------------
def _escape_passfile(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def libpq_connection(database_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(a ``--dbname`` URL without the password, the environment for the tool).

    The password goes into a passfile in a fresh 0700 directory (0600), removed afterwards;
    ``PGPASSWORD`` is dropped from the child's environment so the file is what libpq uses. A
    URL without a password keeps the caller's own ``PGPASSWORD``/``~/.pgpass``."""
    url = make_url(sync_url(database_url))
    password = url.password
    query = dict(url.query)
    if password is None and isinstance(query.get("password"), str):
        password = str(query["password"])
    query.pop("password", None)
    # URL.set(password=None) would keep the password: None there means "unchanged"
    bare = URL.create(url.drivername, username=url.username, host=url.host, port=url.port,
                      database=url.database, query=query).render_as_string(hide_password=False)
    env = dict(os.environ)
    if password is None:
        yield bare, env
        return
    directory = tempfile.mkdtemp(prefix="dfm-pgpass-")  # mkdtemp: 0700, only this user
    passfile = Path(directory) / "pgpass"
    try:
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(fd, "w") as out:
            out.write(f"*:*:*:*:{_escape_passfile(str(password))}\n")
        env.pop("PGPASSWORD", None)
        env["PGPASSFILE"] = str(passfile)
        yield bare, env
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- encryption ----------------------------------------------------------------------------
MAGIC = b"DFMENC1\n"
CHUNK = 1 << 20
_HEADER = struct.Struct(">QB")  # chunk number, last-chunk flag (inside the ciphertext)
_LENGTH = struct.Struct(">I")


def fernet(settings: Settings) -> MultiFernet:
    """``DFM_BACKUP_KEY``: the first key encrypts, every key decrypts (rotation)."""
    if not settings.dfm_backup_key:
        raise BackupError("DFM_BACKUP_KEY is not set (a Fernet key: "
                          "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')")
    try:
        return MultiFernet([Fernet(k.get_secret_value().strip().encode()) for k in settings.dfm_backup_key])
    except ValueError:
        raise BackupError("DFM_BACKUP_KEY must be Fernet keys (32 url-safe base64 bytes each)") from None


class EncryptingWriter(io.RawIOBase):
    """A file of Fernet tokens, one per 1 MiB of plaintext, so a dump of any size is encrypted
    in bounded memory (Fernet itself is one message in memory). Each token holds its chunk
    number and whether it is the last, so a reordered, dropped or cut-off chunk fails to
    decrypt instead of restoring part of a database."""

    def __init__(self, out: IO[bytes], key: MultiFernet) -> None:
        super().__init__()
        self.out, self.key, self.buffer, self.number = out, key, bytearray(), 0
        out.write(MAGIC)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        while len(self.buffer) > CHUNK:
            self._emit(bytes(self.buffer[:CHUNK]), last=False)
            del self.buffer[:CHUNK]
        return len(data)

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        token = self.key.encrypt(_HEADER.pack(self.number, last) + chunk)
        self.out.write(_LENGTH.pack(len(token)) + token)
        self.number += 1

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self.buffer), last=True)
            self.buffer.clear()
            self.out.flush()
        super().close()


def decrypted_chunks(path: Path, key: MultiFernet) -> Iterator[bytes]:
    """The plaintext of an :class:`EncryptingWriter` file, chunk by chunk."""
    with path.open("rb") as src:
        if src.read(len(MAGIC)) != MAGIC:
            raise BackupError(f"{path.name} is not an encrypted dfm backup file")
        number = 0
        while True:
            length = src.read(_LENGTH.size)
            if len(length) < _LENGTH.size:
                raise BackupError(f"{path.name} is cut off (chunk {number} missing)")
            token = src.read(_LENGTH.unpack(length)[0])
            try:
                plain = key.decrypt(token)
            except InvalidToken:
                raise BackupError(f"{path.name}: chunk {number} does not decrypt with DFM_BACKUP_KEY") from None
            index, last = _HEADER.unpack_from(plain)
            if index != number:
                raise BackupError(f"{path.name}: chunk {index} where {number} was expected")
            yield plain[_HEADER.size:]
            number += 1
            if last:
                if src.read(1):
                    raise BackupError(f"{path.name} has data after its last chunk")
                return


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line.decode()
    if rest:
        yield rest.decode()


# --- backup --------------------------------------------------------------------------------
@dataclass
class BackupReport:
    path: Path
    messages: int
    database_bytes: int
    encrypted: bool = False


def _run_tool(argv: list[str], env: dict[str, str], what: str, **kwargs: Any) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, check=False, **kwargs)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else result.stderr
        raise BackupError(f"{what} failed: {stderr.strip()[-500:]}")


def _dump(settings: Settings, major: int, target: Path, key: MultiFernet | None) -> Path:
    """pg_dump into ``target``; encrypted, it streams through the encryptor and the plain dump
    never touches the disk."""
    with libpq_connection(settings.database_url_str) as (dbname, env):
        argv = [pg_tool("pg_dump", major, settings), "--format=custom", "--no-owner", f"--dbname={dbname}"]
        if key is None:
            out = target / DUMP
            _run_tool([*argv, f"--file={out}"], env, "pg_dump")
            return out
        out = target / (DUMP + ENCRYPTED)
        with tempfile.TemporaryFile() as errors, out.open("wb") as raw:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=errors)
            assert proc.stdout is not None
            with EncryptingWriter(raw, key) as sealed:
                while chunk := proc.stdout.read(CHUNK):
                    sealed.write(chunk)
            if proc.wait() != 0:
                errors.seek(0)
                raise BackupError(f"pg_dump failed: {errors.read().decode(errors='replace').strip()[-500:]}")
        return out


async def backup(settings: Settings, root: Path, *, retention: int, encrypt: bool | None = None) -> BackupReport:
    """A new ``root/<timestamp>/``; ``encrypt`` defaults to whether ``DFM_BACKUP_KEY`` is set."""
    encrypt = bool(settings.dfm_backup_key) if encrypt is None else encrypt
    key = fernet(settings) if encrypt else None
    major = await server_major(sync_url(settings.database_url_str))
    pg_tool("pg_dump", major, settings)  # before anything is written: a wrong version is one line
    with _private_files():
        _private_dir(root)
        target = root / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target.mkdir(mode=PRIVATE_DIR)
        try:
            dump = _dump(settings, major, target, key)
            stream = target / (STREAM + (ENCRYPTED if key else ""))
            messages = await export_stream(settings, stream, key)
            (target / MANIFEST).write_text(json.dumps({
                "created_at": datetime.now(UTC).isoformat(), "stream": WEBHOOKS_STREAM, "messages": messages,
                "database": dump.name, "webhooks": stream.name, "encrypted": key is not None,
                "server_major": major}, indent=2))
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # no half backup for the pruning to count
            raise
        for path in target.iterdir():
            os.chmod(path, PRIVATE_FILE)
    _prune(root, retention)
    return BackupReport(target, messages, dump.stat().st_size, key is not None)


async def export_stream(settings: Settings, path: Path, key: MultiFernet | None = None) -> int:
    nc = await connect(settings, name="dfm-backup", identity="cli", max_reconnect_attempts=2)  # reads
    count = 0
    try:
        js = nc.jetstream()
        with path.open("wb") as raw, (EncryptingWriter(raw, key) if key else contextlib.nullcontext(raw)) as out:
            try:
                info = await js.stream_info(WEBHOOKS_STREAM)
            except NotFoundError:
                return 0
            seq = info.state.first_seq
            while seq and seq <= info.state.last_seq:
                try:
                    msg = await js.get_msg(WEBHOOKS_STREAM, seq)
                except NotFoundError:  # deleted or aged out inside the range
                    seq += 1
                    continue
                out.write((json.dumps({"seq": msg.seq, "subject": msg.subject, "headers": msg.headers or {},
                                       "data": base64.b64encode(msg.data or b"").decode()}) + "\n").encode())
                count += 1
                seq += 1
    finally:
        await nc.close()
    return count


# --- restore -------------------------------------------------------------------------------
def _files(source: Path) -> tuple[Path, Path, bool]:
    """(the dump, the stream file, encrypted?) of a backup directory, old backups included."""
    for encrypted in (False, True):
        suffix = ENCRYPTED if encrypted else ""
        if (source / (DUMP + suffix)).exists():
            return source / (DUMP + suffix), source / (STREAM + suffix), encrypted
    raise BackupError(f"{source} has no {DUMP}: not a dfm backup directory")


def _load(settings: Settings, major: int, dump: Path, key: MultiFernet | None) -> None:
    with libpq_connection(settings.database_url_str) as (dbname, env):
        argv = [pg_tool("pg_restore", major, settings), "--no-owner", "--clean", "--if-exists", "--exit-on-error",
                f"--dbname={dbname}"]
        if key is None:
            _run_tool([*argv, str(dump)], env, "pg_restore")
            return
        chunks = decrypted_chunks(dump, key)  # the plain dump goes through a pipe, never to disk
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
            assert proc.stdin is not None
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:  # pg_restore stopped early; its stderr says why
                pass
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if proc.wait() != 0:
                errors.seek(0)
                raise BackupError(f"pg_restore failed: {errors.read().decode(errors='replace').strip()[-500:]}")


async def restore(settings: Settings, source: Path) -> dict[str, Any]:
    dump, stream, encrypted = _files(source)
    key = fernet(settings) if encrypted else None
    if key is not None:  # a wrong key is found before the database is touched
        next(decrypted_chunks(dump, key), None)
    major = await server_major(sync_url(settings.database_url_str))
    _load(settings, major, dump, key)
    renumbered = await import_stream(settings, stream, key)
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


async def import_stream(settings: Settings, path: Path, key: MultiFernet | None = None) -> dict[int, int]:
    """Publish the exported messages again, in order; old sequence → new sequence."""
    nc = await connect(settings, name="dfm-restore", identity=ADMIN, max_reconnect_attempts=2)  # creates
    mapping: dict[int, int] = {}
    try:
        js = nc.jetstream(timeout=10)
        await ensure_topology(js, settings)
        if path.exists():
            lines = _lines(decrypted_chunks(path, key)) if key else iter(path.read_text().splitlines())
            for line in lines:
                if not line:
                    continue
                item = json.loads(line)
                ack = await js.publish(item["subject"], base64.b64decode(item["data"]),
                                       headers=item["headers"] or None)
                mapping[int(item["seq"])] = int(ack.seq)
    finally:
        await nc.close()
    return mapping


def _prune(root: Path, retention: int) -> None:
    backups = sorted(p for p in root.iterdir() if p.is_dir() and ((p / MANIFEST).exists() or (p / DUMP).exists()
                                                                   or (p / (DUMP + ENCRYPTED)).exists()))
    for old in backups[: max(0, len(backups) - retention)]:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["BackupError", "backup", "backup_root", "default_backup_dir", "restore"]
