"""Real service processes for the benchmarks: ``dfm run <service>`` children, stopped together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
VERITY_SECRET = "bench-verity-secret"
LOCATION = "ghlLocationDemo00001"


def stack_env(
    environ: dict[str, str],
    *,
    nats_url: str,
    database_url: str,
    sandbox_port: int,
    ingress_port: int,
    key_file: Path,
    public_key: str,
) -> dict[str, str]:
    """The environment every benchmark's stack runs with: the embedded servers, every vendor on
    the sandbox (mode ``aloware``), GHL's signed webhooks with the run's own key, and echoes of
    our writes sent back to the ingress. Callers add what their run varies."""
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    return {
        **environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "warning",
        "INGRESS_PORT": str(ingress_port),
        "SANDBOX_PORT": str(sandbox_port),
        "METRICS_PORT": "0",
        "GHL_API_KEY": "sandbox-ghl-key",
        "GHL_LOCATION_ID": LOCATION,
        "GHL_BASE_URL": f"{sandbox}/ghl",
        "ALOWARE_API_TOKEN": "sandbox-aloware-token",
        "ALOWARE_BASE_URL": f"{sandbox}/aloware/api/v1",
        "ALOWARE_WEBHOOK_BASIC_USER": "aloware",
        "ALOWARE_WEBHOOK_BASIC_PASS": "bench:pass",
        "VERITY_WEBHOOK_SECRET": VERITY_SECRET,
        "VERITY_BASE_URL": f"{sandbox}/verity",
        "VERITY_API_KEY": "sandbox-verity-key",
        "DF_ADMIN_SECRET": "bench",
        "X_DF_JOBS_SECRET": "bench",
        "CONTACT_SOURCE_OF_TRUTH": "aloware",
        "DFM_GHL_SIGNING_KEY_FILE": str(key_file),
        "GHL_WEBHOOK_ED25519_PUBLIC_KEY": public_key,
        "DFM_SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{ingress_port}",  # GHL's webhooks about our writes
        "GHL_CLIENT_ID": "sandbox-client-id",
        "GHL_CLIENT_SECRET": "sandbox-client-secret",
        "GHL_CONVERSATION_PROVIDER_ID": "sandbox-provider",
        "DFM_TOKEN_KEY": "Qk9_hHuUeXy6sWr5lD6c0mJ3Ojz3v0Yt3kHq3Yl7x8M=",
        "ALOWARE_MAX_RPS": "100000",
    }


class Processes:
    """Started ``dfm run`` processes by service name."""

    def __init__(self, env: dict[str, str], logs: Path | None = None, cwd: Path = ROOT) -> None:
        self.env = env
        self.cwd = cwd  # the tree the services run from (another commit's, exported, to compare)
        # with ``logs``, each process's stdout and stderr go to ``<logs>/<service>-<n>.log``
        # (a bench can then count log lines, e.g. the sandbox's ``sandbox_invalid_request``)
        self.logs = logs
        self.by_service: dict[str, list[subprocess.Popen[bytes]]] = {}

    def start(self, service: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``dfm run <service>``, with ``env`` over the common environment when given."""
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.logs is not None:
            self.logs.mkdir(parents=True, exist_ok=True)
            out = (self.logs / f"{service}-{len(self.by_service.get(service, []))}.log").open("ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", service],
                env={**self.env, **(env or {})},
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT if self.logs is not None else subprocess.DEVNULL,
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child holds its own descriptor
        self.by_service.setdefault(service, []).append(proc)
        return proc

    def log_text(self, service: str) -> str:
        """What every process of ``service`` wrote so far (empty without ``logs``)."""
        if self.logs is None:
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{service}-*.log")))

    def pids(self) -> dict[str, list[int]]:
        return {name: [p.pid for p in ps] for name, ps in self.by_service.items()}

    def stop_all(self) -> None:
        """SIGTERM every process (they drain), SIGKILL what is still up after 30 s."""
        for ps in self.by_service.values():
            for proc in ps:
                proc.terminate()
        for ps in self.by_service.values():
            for proc in ps:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
