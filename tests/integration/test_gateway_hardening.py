"""The gateway under hostile traffic (issue #15 part 4, issue #16 item 11; security-audit F7/F8):
health that a flood cannot turn into database connections, metrics whose series a caller
cannot multiply, rate limits keyed on what a caller cannot vary (the client address, the
verified key), and Verity's redirects followed only on Verity's own origin.

The gateway runs over real HTTP against the sandbox's Verity and Clerk; the client-address
tests run the real ``dfm run gateway`` process, because which peer's ``X-Forwarded-For`` counts
is decided by how that process serves HTTP as much as by the app."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from services.gateway.app import create_app
from services.infra.db.session import sync_url
from services.infra.settings import Settings
from services.tooling.embedded import free_port
from tests.support.gateway import CATALOG, KEY, clerk_token, gateway_settings, proxy, stack
from tests.support.gateway_hardening import bouncing, bouncing_stack, chain  # noqa: F401
from tests.support.ingress_rig import serving
from tests.support.process_rig import http_service

GATEWAY_KEY = "gw-key-1"


def gateway_env(**extra: str) -> dict[str, str]:
    return {"DF_MIDDLEWARE_API_KEY": GATEWAY_KEY, "VERITY_CATALOG_PATH": str(CATALOG), **extra}


# --- health -----------------------------------------------------------------------------------
async def test_a_health_flood_keeps_database_connections_bounded(
    base_env: dict[str, str], clean_db: str, tmp_path: Path
) -> None:
    """300 concurrent ``GET /health`` against the real process: the gateway's connections to the
    database stay at its one pooled probe connection (today: one new connection per request)."""
    env = {**base_env, **gateway_env()}
    database = make_url(clean_db).database
    watcher = await asyncpg.connect(sync_url(clean_db))

    async def gateway_connections() -> int:
        return int(
            await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database
            )
        )

    try:
        with http_service("gateway", env, "GATEWAY_PORT", "/health", tmp_path / "gateway.log") as (base, _):
            peak, done = await gateway_connections(), asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, await gateway_connections())
                    await asyncio.sleep(0.002)  # a sampling interval, not a wait for an effect

            limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
                sampler = asyncio.create_task(sample())
                answers = await asyncio.gather(*(client.get("/health") for _ in range(300)))
                done.set()
                await sampler
            assert [a.status_code for a in answers] == [200] * 300, {a.status_code for a in answers}
            assert {a.json()["status"] for a in answers} == {"ok"}
            assert peak <= 1, f"{peak} connections to the database during the flood"
            assert await gateway_connections() <= 1
    finally:
        await watcher.close()


async def test_public_health_says_ok_or_degraded_and_the_key_shows_why() -> None:
    """Per-dependency error messages are for operators: with the API key only."""
    closed = free_port()
    settings = gateway_settings("http://127.0.0.1:9", database_url=f"postgresql://nobody:pw@127.0.0.1:{closed}/x")
    async with serving(create_app(settings), "/metrics") as url, httpx.AsyncClient(base_url=url) as gw:
        public = await gw.get("/health")
        assert public.status_code == 503 and public.json()["status"] == "degraded"
        checks = public.json()["checks"]
        assert checks["database"] == {"status": "error"}
        assert all(set(check) == {"status"} for check in checks.values()), checks
        detailed = await gw.get("/health", headers=KEY)
        assert detailed.status_code == 503
        assert "database unreachable" in detailed.json()["checks"]["database"]["message"]
        wrong = await gw.get("/health", headers={"Authorization": "Bearer not-the-key"})
        assert set(wrong.json()["checks"]["database"]) == {"status"}


# --- metrics ----------------------------------------------------------------------------------
async def test_metrics_series_stay_bounded_under_random_paths() -> None:
    async with stack(rate_limit_max=10_000) as (gw, _):
        for _ in range(300):
            await gw.get(f"/{secrets.token_hex(6)}/{secrets.token_hex(3)}")
        await gw.get("/api/verity", headers=KEY)
        text = (await gw.get("/metrics")).text
    routes = set(re.findall(r'^dfm_gateway_request[a-z_]*\{[^}]*route="([^"]*)"', text, re.MULTILINE))
    assert "other" in routes and "/api/verity" in routes
    assert routes <= {
        "/api/verity",
        "/health",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "other",
    }, sorted(routes)[:10]


# --- rate limits ------------------------------------------------------------------------------
async def test_a_thousand_junk_authorization_headers_from_one_address_get_429() -> None:
    """A new ``Authorization`` per request used to get a new bucket: brute force of the API key
    was never throttled. Failed attempts are counted per address; past the limit every request
    of that address that carries a key is refused, the right key too (else a 200 among the
    429s would tell the guesser it guessed right)."""
    async with stack() as (gw, _):
        gate = asyncio.Semaphore(50)

        async def guess(n: int) -> int:
            async with gate:
                answer = await gw.get("/api/verity", headers={"Authorization": f"Bearer guess-{n}"})
                return answer.status_code

        statuses = await asyncio.gather(*(guess(n) for n in range(1000)))
        assert set(statuses) == {401, 429}
        assert statuses.count(401) == Settings().gateway_auth_failure_max
        assert statuses.count(429) == 1000 - Settings().gateway_auth_failure_max
        refused = await gw.get("/api/verity", headers=KEY)
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        assert (await gw.get("/health")).status_code == 200  # health stays exempt


async def test_authenticated_requests_are_limited_by_the_verified_key_not_the_header() -> None:
    async with stack(rate_limit_max=3) as (gw, _):
        spellings = ["Bearer gw-key-1", "bearer gw-key-1", "Bearer  gw-key-1", "BEARER gw-key-1"]
        answers = [await gw.get("/api/verity", headers={"Authorization": s}) for s in spellings]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert (await gw.get("/api/verity", headers={"Authorization": "Bearer gw-key-2"})).status_code == 200


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    """Without ``GATEWAY_TRUSTED_PROXIES`` the peer's address is the client, whatever the header
    says; with the loopback proxy trusted, the address the proxy appended is the client, and
    what the client itself put in front of it is not."""
    env = {**gateway_env(), "RATE_LIMIT_MAX": "3"}
    with http_service("gateway", env, "GATEWAY_PORT", "/health", tmp_path / "untrusted.log") as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            answers = [
                await client.get("/api/verity", headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(4)
            ]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]

    env = {**env, "GATEWAY_TRUSTED_PROXIES": "127.0.0.0/8,10.0.0.0/8"}
    with http_service("gateway", env, "GATEWAY_PORT", "/health", tmp_path / "trusted.log") as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            distinct = [
                await client.get("/api/verity", headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(4)
            ]
            assert [a.status_code for a in distinct] == [401] * 4
            # the client's own spoofed entries before the proxy's are not the client
            spoofed = [
                await client.get("/api/verity", headers={"X-Forwarded-For": f"203.0.113.{n}, 192.0.2.9, 10.1.2.3"})
                for n in range(4)
            ]
            assert [a.status_code for a in spoofed] == [401, 401, 401, 429]


# --- redirects from Verity --------------------------------------------------------------------


async def verity_calls(sandbox: httpx.AsyncClient) -> list[str]:
    return [c["path"] for c in (await sandbox.get("/_sandbox/calls", params={"vendor": "verity"})).json()]


async def test_a_same_origin_redirect_from_verity_is_followed() -> None:
    async with bouncing_stack() as (gw, sandbox, sandbox_url, _):
        token = await clerk_token(sandbox)
        auth = {"Authorization": f"Bearer {token}"}
        relative = await proxy(
            gw, endpoint="/api/bounce", method="POST", query={"to": "/verity/api/leads/7"}, body={"x": 1}, headers=auth
        )
        assert relative.status_code == 200, relative.text
        # 307 keeps the method and the body, and the end user's token went along (same origin)
        assert relative.json()["data"] == {
            "method": "POST",
            "path": "/api/leads/7",
            "query": {},
            "body": {"x": 1},
            "user": "user_sandbox_service",
        }
        absolute = await proxy(
            gw,
            endpoint="/api/bounce",
            method="POST",
            body={"x": 2},
            headers=auth,
            query={"to": f"{sandbox_url}/verity/api/leads/8?y=1", "status": "303"},
        )
        assert absolute.status_code == 200, absolute.text
        assert absolute.json()["data"]["method"] == "GET" and absolute.json()["data"]["query"] == {"y": "1"}
        two_hops = await proxy(
            gw, endpoint="/api/bounce", method="GET", headers=auth, query={"to": chain(1, "/verity/api/leads/9")}
        )
        assert two_hops.status_code == 200 and two_hops.json()["data"]["path"] == "/api/leads/9"
        assert await verity_calls(sandbox) == ["/api/leads/7", "/api/leads/8", "/api/leads/9"]


async def test_a_redirect_to_another_origin_or_without_end_is_502_and_not_followed() -> None:
    async with bouncing_stack() as (gw, sandbox, sandbox_url, other_origin):
        token = await clerk_token(sandbox)
        auth = {"Authorization": f"Bearer {token}"}
        port = httpx.URL(sandbox_url).port
        for elsewhere in (
            f"{other_origin}/verity/api/leads/1",  # another port
            f"http://localhost:{port}/verity/api/leads/1",  # another host name
            f"https://127.0.0.1:{port}/verity/api/leads/1",  # another scheme
            "//evil.example/verity/api/leads/1",
            chain(1, f"{other_origin}/verity/api/leads/1"),
        ):  # after a same-origin hop
            answer = await proxy(gw, endpoint="/api/bounce", method="GET", query={"to": elsewhere}, headers=auth)
            assert answer.status_code == 502, (elsewhere, answer.text)
            assert answer.json()["error"]["code"] == "UPSTREAM_REDIRECT"
        endless = await proxy(
            gw, endpoint="/api/bounce", method="GET", headers=auth, query={"to": chain(20, "/verity/api/leads/1")}
        )
        assert endless.status_code == 502 and endless.json()["error"]["code"] == "UPSTREAM_REDIRECT"
        assert await verity_calls(sandbox) == []  # the bounces are answered before the fake records
