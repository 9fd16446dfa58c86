"""``dfm up``'s log stream (stderr): every child's records, one per line, tagged with the
service. JSON lines when not on a terminal or when ``LOG_FORMAT=json``; ``service | level
event key=value`` lines on a terminal. Nothing a child wrote before it exited is lost."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from services.tooling.embedded import free_port
from tests.conftest import create_database, drop_database

PHONE = "+15555550177"
SHUTDOWN_LINES = 10_000  # about 700 kB: in the pipe (1 MiB) when the child exits
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# A child that logs like a service (structlog, stdlib, a bare print, a raw stderr line), says
# it is ready on a socket, waits for SIGTERM, then writes a burst of records in one go and is
# gone at once: the burst is still in the pipe, unread, when the supervisor sees it exit.
CHILD = textwrap.dedent(f"""
    import fcntl, logging, os, signal, socket, sys
    import orjson
    from services.infra.logging import configure_logging, get_logger

    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
    configure_logging(sys.argv[1], "info", os.environ["LOG_FORMAT"])
    log = get_logger()
    log.info("child_started", phone="{PHONE}", port=1234)
    logging.getLogger("uvicorn.error").warning("stdlib line from %s", sys.argv[1])
    print("plain stdout line", flush=True)
    sys.stderr.write("plain stderr line about {PHONE}\\n")
    sys.stderr.flush()
    socket.create_connection(("127.0.0.1", int(sys.argv[2]))).close()
    signal.sigwait({{signal.SIGTERM}})
    fcntl.fcntl(2, fcntl.F_SETPIPE_SZ, 1 << 20)  # the whole burst fits
    burst = memoryview(b"".join(
        orjson.dumps({{"event": "shutdown_line", "i": i, "level": "info", "service": sys.argv[1]}}) + b"\\n"
        for i in range({SHUTDOWN_LINES})))
    while burst:
        burst = burst[os.write(2, burst):]
    os._exit(0)
""")

# The supervisor of `dfm up` in a process of its own, its stderr the log stream: two fake
# services, stopped the way Ctrl-C stops them; the process exits as soon as stop() returns.
SUPERVISOR = textwrap.dedent(f"""
    import os, socket, sys
    from pathlib import Path
    from services.tooling.devstack import LogRelay, Stack

    stack = Stack(data_dir=Path(sys.argv[1]), logs=LogRelay.to(sys.stderr.buffer, os.environ["LOG_FORMAT"]))
    with socket.create_server(("127.0.0.1", 0)) as ready:
        ready.settimeout(30)
        for name in ("alpha", "beta"):
            argv = [sys.executable, "-c", {CHILD!r}, name, str(ready.getsockname()[1])]
            stack.spawn(name, argv, dict(os.environ))
            ready.accept()[0].close()  # the child has logged its start and waits for SIGTERM
    stack.stop()
""")


def run_fake_stack(tmp_path: Path, out: BinaryIO, log_format: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOG_")}, "LOG_FORMAT": log_format}
    supervisor = subprocess.run(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)], env=env, stderr=out, timeout=120, check=False
    )
    assert supervisor.returncode == 0


def test_json_log_stream_is_one_record_per_line_with_its_service(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    with path.open("wb") as out:
        run_fake_stack(tmp_path, out, "json")
    text = path.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line parses
    assert all(isinstance(r, dict) for r in records)
    assert {r["service"] for r in records} == {"alpha", "beta"}
    assert PHONE not in text
    for name in ("alpha", "beta"):
        mine = [r for r in records if r["service"] == name]
        started = next(r for r in mine if r["event"] == "child_started")
        assert started["phone"] == "[REDACTED]" and started["port"] == 1234
        assert any(r.get("logger") == "uvicorn.error" and r["level"] == "warning" for r in mine)
        raw_out = next(r for r in mine if r["event"] == "plain stdout line")
        assert raw_out["stream"] == "stdout" and "timestamp" in raw_out
        raw_err = next(r for r in mine if r.get("stream") == "stderr")
        assert raw_err["event"] == "plain stderr line about [REDACTED]"
        # the burst written after SIGTERM, all of it, in order
        assert [r["i"] for r in mine if r["event"] == "shutdown_line"] == list(range(SHUTDOWN_LINES))


def test_on_a_terminal_the_log_stream_is_human_lines_prefixed_by_service(tmp_path: Path) -> None:
    main, secondary = pty.openpty()
    received = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        with os.fdopen(secondary, "wb") as terminal:
            run_fake_stack(tmp_path, terminal, "auto")
        reader.join(timeout=30)
    finally:
        os.close(main)
    raw = received.decode()
    assert ANSI.search(raw), "a terminal gets colour"
    lines = [ANSI.sub("", line) for line in raw.replace("\r\n", "\n").splitlines() if line]
    assert lines and all(re.match(r"^(alpha|beta) +\| ", line) for line in lines), lines[:5]
    assert not any("{" in line.partition("| ")[2][:1] for line in lines)  # no JSON
    assert PHONE not in raw
    for name in ("alpha", "beta"):
        assert any(re.match(rf"^{name} +\| info +child_started .*phone=\[REDACTED\]", line) for line in lines)
        assert any(re.match(rf"^{name} +\| warning +stdlib line from {name}", line) for line in lines)
        assert sum(f"shutdown_line i={SHUTDOWN_LINES - 1}" in line and line.startswith(name) for line in lines) == 1


def _dfm_up_env(tmp_path: Path, database_url: str, log_format: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DFM_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "INGRESS_PORT": str(free_port()),
        "DFM_UP_SERVICES": "ingress,recorder",
        "LOG_FORMAT": log_format,
    }


async def _run_dfm_up(env: dict[str, str], stderr: int | BinaryIO) -> str:
    """``dfm up`` until ready, one webhook sent with ``dfm send``, then Ctrl-C; its stdout."""
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert proc.stdout is not None
    progress: list[str] = []
    try:
        async with asyncio.timeout(120):
            while not progress or not progress[-1].startswith("ready"):
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line, "dfm up exited early:\n" + "".join(progress)
                progress.append(line)
        fixture = Path(__file__).parents[1] / "fixtures/webhooks/aloware/contact-created.json"
        sent = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "send", str(fixture), "--source", "aloware"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.to_thread(proc.communicate, timeout=90)
        assert proc.returncode == 0, "".join(progress) + rest
        return "".join(progress) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_dfm_up_with_log_format_json_piped_to_a_file_writes_only_json(tmp_path: Path, pg_root_url: str) -> None:
    database_url = await create_database(pg_root_url)
    try:
        path = tmp_path / "dfm-up.jsonl"
        with path.open("wb") as logs:
            progress = await _run_dfm_up(_dfm_up_env(tmp_path, database_url, "json"), logs)
    finally:
        await drop_database(pg_root_url, database_url)
    assert "stopped" in progress
    text = path.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line parses
    assert records and all(isinstance(r, dict) and r.get("service") for r in records)
    assert {r["service"] for r in records} <= {"dfm-up", "ingress", "recorder", "sandbox"}
    assert any(r["service"] == "ingress" and r["event"] == "webhook_accepted" for r in records)
    for needle in ("+15555550101", "ada@example.com"):  # the fixture's phone and e-mail
        assert needle not in text


@pytest.mark.slow
async def test_dfm_up_on_a_terminal_prints_lines_prefixed_by_service(tmp_path: Path, pg_root_url: str) -> None:
    database_url = await create_database(pg_root_url)
    main, secondary = pty.openpty()
    received = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        env = _dfm_up_env(tmp_path, database_url, "auto")
        with os.fdopen(secondary, "wb") as terminal:
            await _run_dfm_up(env, terminal)
        await asyncio.to_thread(reader.join, 30)
    finally:
        os.close(main)
        await drop_database(pg_root_url, database_url)
    lines = [ANSI.sub("", line) for line in received.decode().replace("\r\n", "\n").splitlines() if line]
    prefix = re.compile(r"^(dfm-up|ingress|recorder|sandbox) +\| (debug|info|warning|error|critical) ")
    assert lines and all(prefix.match(line) or re.match(r"^\S+ +\|  ", line) for line in lines), lines[:10]
    assert any(re.match(r"^ingress +\| info +webhook_accepted ", line) for line in lines), lines[:20]
