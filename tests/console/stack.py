"""A `dfm up`-like stack of real `dfm run` processes for the browser tests: the sandbox vendors,
ingress, recorder, the three sync consumers, jobs and the console, on the session's private
nats-server (each process as its own NATS identity) and a fresh database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats

from contracts.streams import CONSUMERS
from services.infra.signing import generate_ed25519, private_pem, public_pem
from services.tooling.embedded import free_port
from tests.console.rig import OPERATOR_HASHES

ROOT = Path(__file__).resolve().parents[2]
CONSUMER_SERVICES = ("recorder", "ghl-sync", "aloware-sync", "verity-sync", "jobs")


@dataclass
class Stack:
    env: dict[str, str]
    console: str
    ingress: str
    sandbox: str
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log_tail(self, service: str, chars: int = 3000) -> str:
        return (self.logs / f"{service}.log").read_text(errors="replace")[-chars:]

    async def ghl_contact(self, first: str, last: str, phone: str, email: str) -> dict[str, Any]:
        """A person creates a contact in (fake) GHL, which then sends its ContactCreate webhook."""
        async with httpx.AsyncClient(base_url=self.sandbox, timeout=10) as client:
            answer = await client.post(
                "/ghl/contacts/",
                json={
                    "locationId": self.env["GHL_LOCATION_ID"],
                    "firstName": first,
                    "lastName": last,
                    "phone": phone,
                    "email": email,
                },
                headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
            )
            assert answer.status_code == 201, answer.text
            return dict(answer.json()["contact"])

    async def fault(self, **spec: Any) -> None:
        async with httpx.AsyncClient(base_url=self.sandbox, timeout=10) as client:
            (await client.post("/_sandbox/faults", json=spec)).raise_for_status()

    async def clear_faults(self) -> None:
        async with httpx.AsyncClient(base_url=self.sandbox, timeout=10) as client:
            (await client.delete("/_sandbox/faults")).raise_for_status()


def stack_env(base_env: dict[str, str], tmp: Path, **extra: str) -> dict[str, str]:
    key, _ = generate_ed25519()
    key_file = tmp / "ghl-signing.pem"
    key_file.write_text(private_pem(key))
    sandbox_port, ingress_port, console_port = free_port(), free_port(), free_port()
    return {
        "PATH": os.environ["PATH"],
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "NODE_ENV": "development",
        **base_env,
        "GHL_API_KEY": "sandbox-ghl-key",
        "ALOWARE_API_TOKEN": "sandbox-aloware-token",
        "GHL_BASE_URL": f"http://127.0.0.1:{sandbox_port}/ghl",
        "ALOWARE_BASE_URL": f"http://127.0.0.1:{sandbox_port}/aloware/api/v1",
        "VERITY_BASE_URL": f"http://127.0.0.1:{sandbox_port}/verity",
        "VERITY_API_KEY": "sandbox-verity-key",
        "SANDBOX_PORT": str(sandbox_port),
        "INGRESS_PORT": str(ingress_port),
        "CONSOLE_PORT": str(console_port),
        "DFM_SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{ingress_port}",
        "DFM_GHL_SIGNING_KEY_FILE": str(key_file),
        "GHL_WEBHOOK_ED25519_PUBLIC_KEY": public_pem(key),
        "GHL_CLIENT_ID": "sandbox-client-id",
        "GHL_CLIENT_SECRET": "sandbox-client-secret",
        "GHL_CONVERSATION_PROVIDER_ID": "sandbox-provider",
        "DFM_TOKEN_KEY": "Qk9_hHuUeXy6sWr5lD6c0mJ3Ojz3v0Yt3kHq3Yl7x8M=",
        "RETRY_BASE_DELAY_S": "0.2",
        "RETRY_MAX_DELAY_S": "1",
        "RETRY_MAX_ATTEMPTS": "2",
        "DFM_CONSUMER_ACK_WAIT_S": "4",
        "ALOWARE_MAX_RPS": "200",
        "METRICS_PORT": "0",
        "CONSOLE_OPERATORS": OPERATOR_HASHES,
        "CONSOLE_SESSION_SECRET": "c" * 40,
        **extra,
    }


def _spawn(stack: Stack, service: str) -> subprocess.Popen[bytes]:
    env = stack.env
    if service == "sandbox":  # the fake vendors never touch NATS, so they have no identity on it
        env = {k: v for k, v in env.items() if k not in ("NATS_URL", "NATS_CREDENTIALS_DIR")}
    with (stack.logs / f"{service}.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", service],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stack.procs[service] = proc
    return proc


async def _wait_http(stack: Stack, service: str, url: str, timeout: float = 60) -> None:
    proc = stack.procs[service]
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{service} exited during start-up: {stack.log_tail(service)}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)  # start-up poll of a child process
    raise RuntimeError(f"{service} did not answer {url}: {stack.log_tail(service)}")


async def _wait_consumers(stack: Stack, nats_url: str, timeout: float = 60) -> None:
    """Every durable has a process pulling from it (a waiting pull request)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        waiting: dict[str, int] = {}
        while time.monotonic() < deadline:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up: {stack.log_tail(name)}")
            waiting = {c.durable: (await js.consumer_info(c.stream, c.durable)).num_waiting or 0 for c in CONSUMERS}
            if all(waiting.values()):
                return
            await asyncio.sleep(0.2)  # start-up poll of the consumers' pull requests
        raise RuntimeError(f"durables without a consumer: {waiting}")
    finally:
        await nc.close()


@asynccontextmanager
async def running_stack(env: dict[str, str], logs: Path) -> AsyncIterator[Stack]:
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any process starts
    stack = Stack(
        env,
        console=f"http://127.0.0.1:{env['CONSOLE_PORT']}",
        ingress=f"http://127.0.0.1:{env['INGRESS_PORT']}",
        sandbox=f"http://127.0.0.1:{env['SANDBOX_PORT']}",
        logs=logs,
    )
    try:
        _spawn(stack, "sandbox")
        await _wait_http(stack, "sandbox", stack.sandbox + "/_sandbox/calls")
        for service in CONSUMER_SERVICES:
            _spawn(stack, service)
        _spawn(stack, "ingress")
        _spawn(stack, "console")
        await _wait_http(stack, "ingress", stack.ingress + "/api/health")
        await _wait_http(stack, "console", stack.console + "/health")
        await _wait_consumers(stack, env["NATS_URL"].replace("nats://", "nats://", 1))
        yield stack
    finally:
        for proc in stack.procs.values():
            proc.terminate()
        for proc in stack.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
