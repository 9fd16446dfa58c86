"""OA-6: GHL refuses a refresh (spec/outbound.md §2.2; security-audit F2).

The refusal marks the installation ``needs_reinstall`` and fails the caller permanently, at
once, with the token endpoint called once however many workers needed the token; the
install callback then repairs the installation. Before the fix the ``needs_reinstall``
update waited for the row lock its own caller held, so every worker needing the token, and
the callback, hung for ever.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from services.clients.ghl_oauth import GhlOAuth, sign_state
from services.infra.db.session import create_engine
from services.infra.errors import Permanent
from services.sandbox.app import create_sandbox_app
from tests.support.ingress_rig import running_ingress, serving
from tests.support.jobs_rig import fetch
from tests.support.oauth_refusal import use_up_refresh_token
from tests.support.sync_rig import pipeline_settings

# A deadlock never returns, so any bound catches it; the refusal itself takes milliseconds
# and the bound is loose only so that a loaded machine does not fail the test.
BOUND_S = 3.0


async def token_calls(sandbox: httpx.AsyncClient) -> int:
    calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "ghl"})).json()
    return len([c for c in calls if c["path"] == "/oauth/token"])


async def test_a_refused_refresh_marks_needs_reinstall_and_fails_at_once_then_reinstall_repairs(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    assert settings.ghl_client_secret is not None
    location = str(settings.ghl_location_id)
    async with AsyncExitStack() as stack:
        sandbox_url = await stack.enter_async_context(
            serving(create_sandbox_app(settings), "/_sandbox/calls", port=settings.sandbox_port)
        )
        sandbox = await stack.enter_async_context(httpx.AsyncClient(base_url=sandbox_url, timeout=10))
        ingress_url = await stack.enter_async_context(running_ingress(settings))
        ingress = await stack.enter_async_context(httpx.AsyncClient(base_url=ingress_url, timeout=10))
        assert (
            await ingress.get("/leadconnector/oauth", params={"code": "code-1", "state": sign_state(settings)})
        ).status_code == 200
        await use_up_refresh_token(settings, sandbox, clean_db)
        before = await token_calls(sandbox)

        engines = [create_engine(settings) for _ in range(4)]  # four workers, one pool each
        workers = [GhlOAuth(settings, engine) for engine in engines]
        for worker, engine in zip(workers, engines, strict=True):
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(worker.aclose)
        async with asyncio.timeout(BOUND_S):
            results = await asyncio.gather(*(w.access_token(location) for w in workers), return_exceptions=True)
        assert all(isinstance(r, Permanent) for r in results), results
        assert await token_calls(sandbox) - before == 1  # one refusal, no storm
        [row] = await fetch(clean_db, "SELECT needs_reinstall, last_refresh_error FROM ghl_oauth_tokens")
        assert row["needs_reinstall"] is True and row["last_refresh_error"] == "invalid_grant"

        async with asyncio.timeout(BOUND_S):  # later work fails without calling GHL again
            with pytest.raises(Permanent, match="needs a reinstall"):
                await workers[0].access_token(location)
        assert await token_calls(sandbox) - before == 1

        async with asyncio.timeout(BOUND_S):  # the install callback is not blocked and repairs it
            reinstalled = await ingress.get(
                "/leadconnector/oauth", params={"code": "code-2", "state": sign_state(settings)}
            )
        assert reinstalled.status_code == 200 and reinstalled.json()["locationId"] == location
        [row] = await fetch(clean_db, "SELECT needs_reinstall, last_refresh_error FROM ghl_oauth_tokens")
        assert row["needs_reinstall"] is False and row["last_refresh_error"] is None
        async with asyncio.timeout(BOUND_S):
            token = await workers[1].access_token(location)
        assert token.startswith("oat-")
