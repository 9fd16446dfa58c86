"""Real service processes for the benchmarks: ``dfm run <service>`` children, stopped together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Processes:
    """Started ``dfm run`` processes by service name."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.by_service: dict[str, list[subprocess.Popen[bytes]]] = {}

    def start(self, service: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", service],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.by_service.setdefault(service, []).append(proc)
        return proc

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
