"""``dfm up``: the whole stack on one machine, embedded NATS/PostgreSQL when unconfigured.

Starts what is missing, runs migrations, creates streams and consumers, then starts each
service as a child process (``dfm run <service>``) with one shared environment, which is
also written to ``<data dir>/stack.env`` so ``dfm send`` in another terminal can sign with
the same secrets. Ctrl-C stops the children, then everything this command started.

Output: stdout is the command's progress (what started, where it listens, ``ready``);
stderr is the stack's log stream, like every process's (services/infra/logging.py). The
children log JSON into pipes and :class:`LogRelay` writes each of their lines as one record
tagged with its service: ``service | level event key=value`` on a terminal (or with
``LOG_FORMAT=console``), a JSON object per line otherwise (or with ``LOG_FORMAT=json``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx
import orjson

from services.infra.broker import prepare_topology, redact_url
from services.infra.db import migrate
from services.infra.logging import configure_logging, redact, render_service_line, resolve_format
from services.infra.nats_auth import observer, write_credentials, write_secret
from services.infra.settings import Settings, load_settings
from services.infra.signing import generate_ed25519, load_private_key, private_pem, public_pem
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres, free_port

EXAMPLE_CATALOG = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "apis" / "verity" / "api_catalog.json"

# Dev-only secrets generated once per data dir when the operator set none.
DEV_SECRET_VARS = (
    "DF_ADMIN_SECRET",
    "X_DF_JOBS_SECRET",
    "VERITY_WEBHOOK_SECRET",
    "GHL_WORKFLOW_WEBHOOK_TOKEN",
    "ALOWARE_WEBHOOK_BASIC_PASS",
    "DF_MIDDLEWARE_API_KEY",
    "DFM_TOKEN_KEY",
)


class LogRelay:
    """The stack's one log stream: every line a child writes, as one record of its service.

    A reader thread per child pipe takes each line as it comes; a JSON object is a record
    (the children log JSON), anything else (a traceback printed before logging was set up, a
    library's ``print``) becomes one with the line as its ``event``. Each record is redacted
    again (a child is a process we do not control line by line), gets its ``service`` and is
    written in one piece, under one lock: a JSON line, or :func:`render_service_line`."""

    def __init__(self, out: BinaryIO, fmt: str, *, colors: bool = False) -> None:
        self._out = out
        self._json = fmt == "json"
        self._colors = colors
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._broken = False

    @classmethod
    def to(cls, out: BinaryIO, log_format: str) -> LogRelay:
        """A relay writing to ``out`` in ``LOG_FORMAT`` (``auto``: lines on a terminal, JSON
        elsewhere); colour only on a terminal, and never with ``NO_COLOR`` set."""
        fmt = resolve_format(log_format, out)
        return cls(out, fmt, colors=fmt == "console" and out.isatty() and "NO_COLOR" not in os.environ)

    def follow(self, service: str, pipe: IO[bytes], stream: str) -> None:
        """Relay ``pipe`` (a child's ``stream``, stdout or stderr) until it closes."""
        reader = threading.Thread(
            target=self._pump, args=(service, pipe, stream), name=f"logs-{service}-{stream}", daemon=True
        )
        self._readers.append(reader)
        reader.start()

    def drain(self, timeout: float = 10) -> None:
        """Wait until every pipe followed so far is read to its end (the children have exited)."""
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        self._readers = [r for r in self._readers if r.is_alive()]

    def _pump(self, service: str, pipe: IO[bytes], stream: str) -> None:
        with pipe:
            for line in pipe:  # to EOF: the pipe keeps being emptied, so a child never blocks on it
                if line.strip():
                    self.write(service, line, stream)

    def write(self, service: str, line: bytes, stream: str = "stderr") -> None:
        """Write one line of ``service`` as a record."""
        record = self._record(service, line, stream)
        text = (
            orjson.dumps(record, default=str)
            if self._json
            else render_service_line(record, colors=self._colors).encode()
        ) + b"\n"
        with self._lock:
            if self._broken:
                return
            try:
                self._out.write(text)
                self._out.flush()
            except (BrokenPipeError, ValueError):  # a reader that went away (`dfm up | head`)
                self._broken = True

    @staticmethod
    def _record(service: str, line: bytes, stream: str) -> MutableMapping[str, Any]:
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            record: MutableMapping[str, Any] = {"service": service, **parsed}
            record["service"] = service
        else:
            record = {
                "service": service,
                "event": line.decode(errors="replace").rstrip("\r\n"),
                "level": "error" if stream == "stderr" else "info",
                "stream": stream,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
        return redact(None, "", record)


@dataclass
class Stack:
    """What ``dfm up`` started or attached to."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    nats: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    # where the children's output goes; None: they write to this process's stdout/stderr
    logs: LogRelay | None = None

    def spawn(self, service: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a child of the stack; with ``logs``, it logs JSON into pipes the relay reads."""
        if self.logs is None:
            proc = subprocess.Popen(argv, env=env)
        else:
            proc = subprocess.Popen(
                argv,
                env={**env, "LOG_FORMAT": "json"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout is not None and proc.stderr is not None
            self.logs.follow(service, proc.stdout, "stdout")
            self.logs.follow(service, proc.stderr, "stderr")
        self.children[service] = proc
        return proc

    def stop(self) -> None:
        """Stop children (SIGTERM, then SIGKILL), relay what they wrote to the end, then stop
        the embedded servers."""
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()
        if self.logs is not None:
            self.logs.drain()
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _load_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    return values


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{k}={v}\n" for k, v in sorted(values.items()))
    path.write_text("# written by dfm up; dev values only\n" + body)
    path.chmod(0o600)


def dev_secrets(data_dir: Path, configured: Settings) -> dict[str, str]:
    """Stable per-data-dir dev secrets for every secret the operator left unset."""
    store = data_dir / "dev-secrets.env"
    known = _load_env_file(store)
    out: dict[str, str] = {}
    for var in DEV_SECRET_VARS:
        if getattr(configured, var.lower()):
            continue
        fresh = (
            base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
            if var == "DFM_TOKEN_KEY"
            else secrets.token_urlsafe(24)
        )  # a Fernet key for the token store
        out[var] = known.get(var) or fresh
    if "ALOWARE_WEBHOOK_BASIC_PASS" in out and not configured.aloware_webhook_basic_user:
        out["ALOWARE_WEBHOOK_BASIC_USER"] = known.get("ALOWARE_WEBHOOK_BASIC_USER", "aloware")
    _write_env_file(store, {**known, **out})
    return out


def dev_ghl_signing_key(data_dir: Path, configured: Settings) -> dict[str, str]:
    """Sandbox mode only (no GHL credentials): a dev Ed25519 key `dfm send` signs with.

    Its public key is accepted next to GHL's published one, so real GHL bodies still verify.
    """
    if configured.ghl_api_key is not None or configured.dfm_ghl_signing_key_file:
        return {}
    key_file = data_dir / "dev-ghl-signing-key.pem"
    if not key_file.exists():
        key, _ = generate_ed25519()
        key_file.write_text(private_pem(key))
        key_file.chmod(0o600)
    dev_public = public_pem(load_private_key(key_file)).strip()
    keys = configured.ghl_webhook_ed25519_public_key.strip() + "\n\n" + dev_public
    return {
        "DFM_GHL_SIGNING_KEY_FILE": str(key_file),
        "GHL_WEBHOOK_ED25519_PUBLIC_KEY": keys.replace("\n", "\\n"),
    }


def sandbox_env(settings: Settings, say: Callable[[str], None]) -> dict[str, str]:
    """Sandbox vendors when no vendor credentials are set: point every client at them."""
    if settings.ghl_api_key is not None or settings.aloware_api_token is not None:
        say("vendors     real (credentials configured)")
        return {}
    port = settings.sandbox_port if "sandbox_port" in settings.model_fields_set else free_port()
    base = f"http://127.0.0.1:{port}"
    say(f"vendors     sandbox at {base} (no vendor credentials set)")
    return {
        "SANDBOX_PORT": str(port),
        "GHL_BASE_URL": f"{base}/ghl",
        "GHL_API_KEY": "sandbox-ghl-key",
        "ALOWARE_BASE_URL": f"{base}/aloware/api/v1",
        "ALOWARE_API_TOKEN": "sandbox-aloware-token",
        "VERITY_BASE_URL": settings.verity_base_url or f"{base}/verity",
        "VERITY_API_KEY": "sandbox-verity-key",
        "DFM_SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{settings.ingress_port}",
        # the gateway and `dfm run mcp` next to the sandbox: its fake Clerk and an example catalog
        "GHL_CLIENT_ID": "sandbox-client-id",
        "GHL_CLIENT_SECRET": "sandbox-client-secret",
        "GHL_CONVERSATION_PROVIDER_ID": "sandbox-provider",
        "CLERK_API_URL": f"{base}/clerk/v1",
        "CLERK_SECRET_KEY": "sandbox-clerk-secret",
        "CLERK_SERVICE_USER_ID": "user_sandbox_service",
        "CLERK_JWKS_URL": f"{base}/clerk/.well-known/jwks.json",
        **(
            {"VERITY_CATALOG_PATH": str(EXAMPLE_CATALOG)}
            if not settings.verity_catalog_path and EXAMPLE_CATALOG.exists()
            else {}
        ),
    }


def embedded_nats(data_dir: Path) -> EmbeddedNats:
    """The dev stack's NATS with authentication on, like a deployment: the identities of
    ``dfm nats creds`` (seeds kept in the data dir across runs, so restarted children keep
    working), each service connecting as its own. Connections without credentials are the
    read-only observer, so ``nats stream ls`` and the like still work locally."""
    creds = data_dir / "nats-credentials"
    observer_pw = data_dir / "nats-observer.pw"
    if not observer_pw.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write_secret(observer_pw, secrets.token_urlsafe(24).encode())
    conf = write_credentials(creds, extra_users=[observer(observer_pw.read_text().strip())])
    return EmbeddedNats(
        store_dir=data_dir / "nats", sync_always=True, auth_config=conf, no_auth_user="observer"
    ).start()


def start_infrastructure(settings: Settings, data_dir: Path, say: Callable[[str], None]) -> Stack:
    """Attach to configured NATS/PostgreSQL or start embedded ones; migrate; make streams.

    This process's own records (migrations, topology) and the children's share stderr."""
    configure_logging("dfm-up", settings.log_level, settings.log_format)
    stack = Stack(data_dir=data_dir, logs=LogRelay.to(sys.stderr.buffer, settings.log_format))
    try:
        if settings.nats_url:
            say(f"NATS        {','.join(map(redact_url, settings.nats_url))} (configured)")
        else:
            stack.nats = embedded_nats(data_dir)
            stack.env["NATS_URL"] = stack.nats.url
            stack.env["NATS_CREDENTIALS_DIR"] = str(stack.nats.credentials_dir)
            say(f"NATS        {stack.nats.url} (embedded, store {stack.nats.store_dir})")
            say(f"identities  {stack.nats.credentials_dir} (one nkey seed per service; no_auth_user is read-only)")
        if settings.database_url:
            say("PostgreSQL  DATABASE_URL (configured)")
        else:
            stack.postgres = EmbeddedPostgres(data_dir=data_dir / "postgres").start()
            stack.env["DATABASE_URL"] = stack.postgres.url()
            say(f"PostgreSQL  {stack.env['DATABASE_URL']} (embedded)")
        stack.env.update(dev_secrets(data_dir, settings))
        stack.env.update(dev_ghl_signing_key(data_dir, settings))
        stack.env.setdefault("GHL_LOCATION_ID", settings.ghl_location_id or "ghlLocationDemo00001")
        stack.env.update(sandbox_env(settings, say))
        effective = load_settings(**{k.lower(): v for k, v in stack.env.items()})
        migrate.upgrade(effective.database_url_str)
        say(f"migrations  {migrate.current(effective.database_url_str)}")
        asyncio.run(prepare_topology(effective))
        say("streams     WEBHOOKS (webhooks.>), JOBS (jobs.>) and durable consumers ready")
        _write_env_file(data_dir / "stack.env", stack.env)
        say(f"environment {data_dir / 'stack.env'} (used by `dfm send`)")
    except BaseException:
        stack.stop()
        raise
    return stack


def start_service(stack: Stack, service: str) -> subprocess.Popen[bytes]:
    """Run ``dfm run <service>`` as a child with the stack's environment; services without an
    HTTP port of their own get a free ``METRICS_PORT`` each (all on one host here)."""
    env = {**os.environ, **stack.env}
    if service not in ("ingress", "gateway", "sandbox", "console"):
        env["METRICS_PORT"] = str(free_port())
        stack.metrics[service] = int(env["METRICS_PORT"])
    return stack.spawn(service, [sys.executable, "-m", "services.cli", "run", service], env)


def start_services(stack: Stack, services: list[str], settings: Settings, say: Callable[[str], None]) -> None:
    """Start each named service; print where the HTTP ones listen."""
    if "SANDBOX_PORT" in stack.env:
        sandbox = f"http://127.0.0.1:{stack.env['SANDBOX_PORT']}"
        wait_http(sandbox + "/_sandbox/calls", start_service(stack, "sandbox"))
        say(f"sandbox     {sandbox} (/_sandbox/calls, /_sandbox/ghl/contacts)")
    for service in services:
        proc = start_service(stack, service)
        if service == "ingress":
            ingress = f"http://127.0.0.1:{settings.ingress_port}"
            wait_http(ingress + "/api/health/live", proc)
            say(f"ingress     {ingress} (webhooks, health, metrics)")
            if "SANDBOX_PORT" in stack.env:  # the sandbox GHL's Marketplace install, for messages
                # the callback wants a state we signed
                from services.clients.ghl_oauth import sign_state

                answer = httpx.get(
                    ingress + "/leadconnector/oauth",
                    params={"code": "code-dev", "state": sign_state(settings)},
                    timeout=10,
                )
                say(f"GHL OAuth   sandbox installation {'done' if answer.status_code == 200 else answer.text}")
        elif service == "gateway":
            gateway = f"http://127.0.0.1:{settings.gateway_port}"
            wait_http(gateway + "/health", proc)
            say(f"gateway     {gateway} (/api/verity, Bearer DF_MIDDLEWARE_API_KEY from .dfm/dev-secrets.env)")
        elif service == "console":
            console = f"http://{settings.console_host}:{settings.console_port}"
            wait_http(console + "/health", proc)
            who = (
                "CONSOLE_OPERATORS"
                if settings.console_operators
                else "admin with DF_ADMIN_SECRET from .dfm/dev-secrets.env"
            )
            say(f"console     {console} (operator console: sign in as {who})")
        else:
            port = stack.metrics.get(service)
            say(f"{service:<11} running" + (f" (metrics http://127.0.0.1:{port}/metrics)" if port else ""))


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Block until ``url`` answers, so "ready" means ready; fail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with code {proc.returncode} during start-up")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def wait_until_interrupted(stack: Stack, say: Callable[[str], None]) -> int:
    """Block until Ctrl-C/SIGTERM or a child dies; returns the exit code for ``dfm up``."""
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stopping:
        for name, proc in stack.children.items():
            if proc.poll() is not None:
                say(f"service {name} exited with code {proc.returncode}; stopping the stack")
                return 1
        time.sleep(0.5)  # supervision tick: the loop re-checks the flag and the children
    return 0
