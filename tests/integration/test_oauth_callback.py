"""The GHL Marketplace install callback ``GET /leadconnector/oauth`` (issue #15 part 6;
spec/outbound.md OA-7; security-audit F12).

Before: ``state`` was never checked and was the location fallback, so anyone with an
authorization code of their own could overwrite our location's token row; token exchanges
were unthrottled; a refused code answered 500. Now an install we start carries a signed,
expiring ``state``, the location comes only from GHL's token response and must be one we
serve, the route is throttled per address, and the answers say what went wrong: 400 for a
refused code or a bad ``state``, 403 for a foreign location, 502 when GHL cannot be reached,
503 when the app is not configured.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import SecretStr

from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from services.tooling.embedded import free_port
from tests.conftest import TEST_SECRETS
from tests.support.ingress_rig import running_ingress, serving
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import pipeline_settings

ADMIN = {"X-DF-ADMIN-SECRET": TEST_SECRETS["DF_ADMIN_SECRET"].split(",")[0]}
FOREIGN = "someoneElsesLocation"


def signed(settings: Settings, **kwargs: Any) -> str:
    from services.clients.ghl_oauth import sign_state

    return sign_state(settings, **kwargs)


@asynccontextmanager
async def callback(
    settings: Settings,
    *,
    sandbox_settings: Settings | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The ingress (``settings``) and the fake GHL it calls, whose token answers name the
    location of ``sandbox_settings`` (default: ours); (ingress client, sandbox client)."""
    async with AsyncExitStack() as stack:
        sandbox_url = await stack.enter_async_context(
            serving(create_sandbox_app(sandbox_settings or settings), "/_sandbox/calls", port=settings.sandbox_port)
        )
        sandbox = await stack.enter_async_context(httpx.AsyncClient(base_url=sandbox_url, timeout=10))
        ingress_url = await stack.enter_async_context(running_ingress(settings))
        ingress = await stack.enter_async_context(httpx.AsyncClient(base_url=ingress_url, timeout=10))
        yield ingress, sandbox


async def token_rows(db: str) -> list[dict[str, Any]]:
    return await fetch(
        db,
        "SELECT location_id, access_token, refresh_token, updated_at, needs_reinstall "
        "FROM ghl_oauth_tokens ORDER BY location_id",
    )


async def token_calls(sandbox: httpx.AsyncClient) -> int:
    calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "ghl"})).json()
    return len([c for c in calls if c["path"] == "/oauth/token"])


async def test_a_forged_expired_or_missing_state_changes_nothing(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with callback(settings) as (ingress, sandbox):
        installed = await ingress.get("/leadconnector/oauth", params={"code": "code-1", "state": signed(settings)})
        assert installed.status_code == 200, installed.text
        before, calls = await token_rows(clean_db), await token_calls(sandbox)
        ttl = settings.ghl_oauth_state_ttl_s
        other_key = settings.model_copy(update={"ghl_oauth_state_key": SecretStr("not-our-key")})
        for state, error in [
            ("x", "invalid_state"),
            (settings.ghl_location_id, "invalid_state"),  # the old location fallback
            (signed(other_key), "invalid_state"),
            (signed(settings)[:-2] + "AA", "invalid_state"),
            (signed(settings, now=time.time() - ttl - 5), "expired_state"),
            (None, "missing_state"),
        ]:
            answer = await ingress.get("/leadconnector/oauth", params={"code": "code-2", "state": state})
            assert answer.status_code == 400, (state, answer.text)
            assert answer.json() == {
                "success": False,
                "error": error,
                "errorDescription": answer.json()["errorDescription"],
            }
        assert await token_rows(clean_db) == before
        assert await token_calls(sandbox) == calls  # not even exchanged


async def test_a_token_response_for_a_foreign_location_changes_nothing_and_answers_403(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    ours = pipeline_settings(base_env, tmp_path)
    async with callback(ours) as (ingress, _):
        assert (
            await ingress.get("/leadconnector/oauth", params={"code": "code-1", "state": signed(ours)})
        ).status_code == 200
    before = await token_rows(clean_db)
    # the same deployment, but GHL's answer to this code names another location
    attacked = ours.model_copy(update={"sandbox_port": free_port()})
    foreign_ghl = attacked.model_copy(update={"ghl_location_id": FOREIGN})
    attacked = attacked.model_copy(update={"ghl_base_url": f"http://127.0.0.1:{attacked.sandbox_port}/ghl"})
    async with callback(attacked, sandbox_settings=foreign_ghl) as (ingress, sandbox):
        answer = await ingress.get("/leadconnector/oauth", params={"code": "code-evil", "state": signed(attacked)})
        assert await token_calls(sandbox) == 1
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "location_not_allowed"
    assert await token_rows(clean_db) == before


async def test_a_refused_code_is_400_and_unreachable_ghl_is_502(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with callback(settings) as (ingress, _):
        refused = await ingress.get("/leadconnector/oauth", params={"code": "not-a-code", "state": signed(settings)})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "token_exchange_failed"
    assert refused.json()["errorDescription"] == "invalid_grant"
    unreachable = settings.model_copy(update={"ghl_base_url": f"http://127.0.0.1:{free_port()}/ghl"})
    async with running_ingress(unreachable) as url, httpx.AsyncClient(base_url=url, timeout=30) as ingress:
        answer = await ingress.get("/leadconnector/oauth", params={"code": "code-1", "state": signed(unreachable)})
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"] == "ghl_unreachable"
    assert await token_rows(clean_db) == []


async def test_an_unconfigured_app_answers_503(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    for unset in (
        {"ghl_client_id": None},
        {"ghl_client_secret": None},
        {"dfm_token_key": []},
        {"ghl_location_id": None, "ghl_oauth_allowed_locations": []},
    ):
        unconfigured = settings.model_copy(update=unset)
        async with running_ingress(unconfigured) as url, httpx.AsyncClient(base_url=url, timeout=10) as ingress:
            answer = await ingress.get("/leadconnector/oauth", params={"code": "code-1", "state": "any"})
        assert answer.status_code == 503, (unset, answer.text)
        assert answer.json()["success"] is False
    assert await token_rows(clean_db) == []


async def test_callbacks_are_throttled_per_address(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    settings = pipeline_settings(base_env, tmp_path, GHL_OAUTH_RATE_LIMIT_MAX="3")
    async with callback(settings) as (ingress, sandbox):
        for _ in range(3):
            assert (
                await ingress.get("/leadconnector/oauth", params={"code": "code-x", "state": "forged"})
            ).status_code == 400
        throttled = await ingress.get("/leadconnector/oauth", params={"code": "code-1", "state": signed(settings)})
        assert throttled.status_code == 429, throttled.text
        assert int(throttled.headers["retry-after"]) >= 1
        assert await token_calls(sandbox) == 0
    assert await token_rows(clean_db) == []


async def test_an_install_started_by_an_operator_completes(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(
        base_env, tmp_path, GHL_OAUTH_REDIRECT_URI="https://mw.example.com/leadconnector/oauth"
    )
    async with callback(settings) as (ingress, _):
        assert (await ingress.get("/leadconnector/oauth/start")).status_code == 401
        started = await ingress.get("/leadconnector/oauth/start", headers=ADMIN)
        assert started.status_code == 302, started.text
        target = urlsplit(started.headers["location"])
        assert (target.scheme, target.netloc, target.path) == (
            "https",
            "marketplace.gohighlevel.com",
            "/v2/oauth/chooselocation",
        )
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert query["response_type"] == "code" and query["client_id"] == settings.ghl_client_id
        assert query["redirect_uri"] == settings.ghl_oauth_redirect_uri
        # GHL sends the installer back with a code and our state
        back = await ingress.get("/leadconnector/oauth", params={"code": "code-1", "state": query["state"]})
        assert back.status_code == 200, back.text
        assert back.json()["locationId"] == settings.ghl_location_id
    [row] = await token_rows(clean_db)
    assert row["location_id"] == settings.ghl_location_id


async def test_marketplace_installs_without_state_only_when_allowed(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with callback(settings) as (ingress, _):
        refused = await ingress.get("/leadconnector/oauth", params={"code": "code-1"})
        assert refused.status_code == 400 and refused.json()["error"] == "missing_state"
    assert await token_rows(clean_db) == []
    allowed = settings.model_copy(update={"ghl_oauth_allow_install_without_state": True, "sandbox_port": free_port()})
    allowed = allowed.model_copy(update={"ghl_base_url": f"http://127.0.0.1:{allowed.sandbox_port}/ghl"})
    async with callback(allowed) as (ingress, _):
        answer = await ingress.get("/leadconnector/oauth", params={"code": "code-1"})
        assert answer.status_code == 200, answer.text
        forged = await ingress.get("/leadconnector/oauth", params={"code": "code-2", "state": "forged"})
        assert forged.status_code == 400  # a state that is there must still be ours
    [row] = await token_rows(clean_db)
    assert row["location_id"] == settings.ghl_location_id
