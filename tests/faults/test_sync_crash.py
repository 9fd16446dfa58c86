"""Crash test: a ghl-sync process SIGKILLed between the vendor write and the ack."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from tests.support.contacts import ALOWARE_AUTH, aloware_contact, done
from tests.support.ingress_rig import running_ingress, running_recorder, serving
from tests.support.sync_rig import eventually, pipeline_settings


def ghl_sync_process(settings: Settings, base_env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """``dfm run ghl-sync`` in a process of its own, its log lines in ``log``."""
    env = {
        "PATH": os.environ["PATH"],
        **base_env,
        "GHL_API_KEY": "sandbox-ghl-key",
        "GHL_BASE_URL": settings.ghl_base_url,
        "DFM_CONSUMER_ACK_WAIT_S": "3",
        "RETRY_BASE_DELAY_S": "0.2",
        "LOG_LEVEL": "info",
        **extra,
    }
    with log.open("wb") as sink:  # a file, not a pipe nobody reads: a full pipe would block the process
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "ghl-sync"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
async def test_sigkill_between_vendor_write_and_ack_creates_no_duplicate(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, DFM_CONSUMER_ACK_WAIT_S="3")
    async with AsyncExitStack() as stack:
        sandbox_url = await stack.enter_async_context(
            serving(create_sandbox_app(settings), "/_sandbox/calls", port=settings.sandbox_port)
        )
        await stack.enter_async_context(running_recorder(settings))
        ingress_url = await stack.enter_async_context(running_ingress(settings, port=settings.ingress_port))
        sandbox = await stack.enter_async_context(httpx.AsyncClient(base_url=sandbox_url))
        ingress = await stack.enter_async_context(httpx.AsyncClient(base_url=ingress_url))

        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
        first = ghl_sync_process(settings, base_env, first_log, DFM_FAULT_PAUSE_AFTER_VENDOR_WRITE_S="120")
        try:
            answer = (
                await ingress.post(
                    "/api/webhooks/aloware", headers=ALOWARE_AUTH, content=json.dumps(aloware_contact(42))
                )
            ).json()

            async def paused() -> bool:  # GHL answered, the claim is settled, the ack not sent
                return b"fault_pause_after_vendor_write" in first_log.read_bytes()

            # not "GHL recorded the POST": under load that can be seen before the process has
            # settled the claim, and a kill there is another fault (a claim held until its TTL)
            await eventually(paused, timeout=30)
            calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "ghl"})).json()
            assert any(c["method"] == "POST" and c["status"] == 201 for c in calls)
            first.send_signal(signal.SIGKILL)  # the contact exists in GHL; nothing was acked
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        second = ghl_sync_process(settings, base_env, second_log)
        try:
            row = await eventually(lambda: done(clean_db, answer["id"]), timeout=60)
        except TimeoutError:
            pytest.fail(f"the second process did not finish the event; its log:\n{second_log.read_text()[-4000:]}")
        finally:
            second.terminate()
            await asyncio.to_thread(second.wait, 30)
        assert (row["status"], row["attempts"]) == ("done", 2)
        contacts = (await sandbox.get("/_sandbox/ghl/contacts")).json()
        assert len(contacts) == 1
        calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "ghl"})).json()
        assert len([c for c in calls if c["method"] == "POST" and c["path"] == "/contacts/"]) == 1
