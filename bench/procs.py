"""Real service processes for the benchmarks: ``dfm run <service>`` children, stopped together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]


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
