"""A ``dfm run <service>`` child process serving HTTP on a free port, for tests that need a
real process (fuzzers whose HTTP client is synchronous, fault tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


# a port free when asked can be taken before the child binds it (another worker's outgoing
# connection draws from the same ephemeral range): start again on another port this often
START_ATTEMPTS = 3


def _start(
    service: str, full: dict[str, str], port: int, log: Path, health: str
) -> tuple[str, subprocess.Popen[bytes]] | None:
    """The child serving on ``port`` once ``health`` answers 200; None when it exited
    because the port was taken meanwhile."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", service],
            env=full,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=5) as client:
        for _ in range(400):
            if proc.poll() is not None:
                output = log.read_text()[-2000:]
                if "address already in use" in output:
                    return None
                raise RuntimeError(f"{service} exited during start-up: {output}")
            try:
                if client.get(health).status_code == 200:
                    return base, proc
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # start-up poll of a child process
    _stop(proc)
    raise RuntimeError(f"{service} did not answer {health}: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def http_service(
    service: str, env: dict[str, str], port_variable: str, health: str, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``service`` with ``env`` (plus PATH) on a free port; yield its base URL and process
    once ``health`` answers 200; stop it on exit. Its output goes to ``log``."""
    from services.tooling.embedded import free_port
    from tests import conftest

    started = None
    for _ in range(START_ATTEMPTS):
        port = free_port()
        full = {"PATH": os.environ["PATH"], "LOG_LEVEL": "warning", "METRICS_PORT": "0", **env}
        full[port_variable] = str(port)
        session = conftest.SESSION_NATS
        if session is not None and full.get("NATS_URL") == session.url:  # the service's own identity
            full.setdefault("NATS_CREDENTIALS_DIR", str(session.credentials_dir))
        started = _start(service, full, port, log, health)
        if started is not None:
            break
    if started is None:
        raise RuntimeError(f"{service}: its port was taken before it bound, {START_ATTEMPTS} times")
    base, proc = started
    try:
        yield base, proc
    finally:
        _stop(proc)
