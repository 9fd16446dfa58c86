"""The ingress under unauthenticated pressure (issue #15 part 5; security-audit F10, F21).

Before: a body trickled in slowly held its request (and up to 1 MiB of memory) for ever,
since authentication needs the whole body; connections were unbounded; the public readiness
probe borrowed from the 5-connection pool the outbox needs when NATS is down; ``/docs``,
``/openapi.json`` and ``/metrics`` were public in production; failed admin logins were never
throttled.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from services.infra.broker import prepare_topology
from services.infra.settings import Settings
from services.ingress.app import create_asgi
from services.tooling.embedded import free_port
from tests.conftest import TEST_SECRETS
from tests.support.ingress_rig import serving
from tests.support.process_rig import http_service

ADMIN = {"X-DF-ADMIN-SECRET": TEST_SECRETS["DF_ADMIN_SECRET"].split(",")[0]}
TEXTING_SECRET = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]


def settings_of(base_env: dict[str, str], **extra: str) -> Settings:
    return Settings(**{k.lower(): v for k, v in {**base_env, **extra}.items()})


@asynccontextmanager
async def ingress_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The ingress served on loopback; (a client, the ASGI app as served)."""
    await prepare_topology(settings)
    app = create_asgi(settings)
    async with serving(app, "/api/health") as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client, app


async def slow_body(base: str, path: str = "/api/webhooks/texting", declared: int = 1000) -> tuple[Any, Any]:
    """A connection that sends its headers and one byte of a ``declared``-byte body, then nothing."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"x-texting-secret: {TEXTING_SECRET}\r\nContent-Length: {declared}\r\n\r\n{{"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def status_line(reader: asyncio.StreamReader) -> str:
    return (await reader.readline()).decode().strip()


async def test_a_slow_body_is_answered_408_after_the_deadline_while_others_are_served(base_env: dict[str, str]) -> None:
    settings = settings_of(base_env, WEBHOOK_BODY_READ_TIMEOUT_S="1")
    async with ingress_app(settings) as (client, _):
        started = time.monotonic()
        reader, writer = await slow_body(str(client.base_url))
        try:
            for _ in range(5):  # meanwhile the ingress serves everyone else
                assert (await client.get("/api/health/live")).status_code == 200
            async with asyncio.timeout(6):
                line = await status_line(reader)
            elapsed = time.monotonic() - started
        finally:
            writer.close()
        assert line.startswith("HTTP/1.1 408"), line
        assert 0.9 <= elapsed < 5, elapsed
        assert (await client.get("/api/health/live")).status_code == 200


def test_connections_beyond_the_concurrency_limit_get_503(base_env: dict[str, str], tmp_path: Path) -> None:
    env = {**base_env, "INGRESS_LIMIT_CONCURRENCY": "3", "WEBHOOK_BODY_READ_TIMEOUT_S": "30"}

    async def scenario(base: str) -> None:
        held = [await slow_body(base) for _ in range(3)]
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                refused = await client.get("/api/health/live")
                assert refused.status_code == 503, refused.text
        finally:
            for _, writer in held:
                writer.close()
                await writer.wait_closed()
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            async with asyncio.timeout(10):  # the server notices the closed connections at once
                while (await client.get("/api/health/live")).status_code != 200:
                    await asyncio.sleep(0.05)

    with http_service("ingress", env, "INGRESS_PORT", "/api/health", tmp_path / "ingress.log") as (base, _):
        asyncio.run(scenario(base))


async def test_readiness_answers_from_its_own_connection_while_the_outbox_pool_is_exhausted(
    base_env: dict[str, str],
) -> None:
    settings = settings_of(base_env)
    async with ingress_app(settings) as (client, app), AsyncExitStack() as held:
        outbox_engine = app.app.state.ingress.engine
        for _ in range(outbox_engine.pool.size()):  # every connection the outbox could use, taken
            conn = await held.enter_async_context(outbox_engine.connect())
            await conn.execute(text("SELECT 1"))
        await asyncio.sleep(1.1)  # past the readiness cache: the next answer is a fresh probe
        started = time.monotonic()
        health = await client.get("/api/health")
        elapsed = time.monotonic() - started
        assert health.status_code == 200, health.text
        assert health.json()["checks"]["database"] == "ok"
        assert elapsed < 1.0, elapsed


def probes(metrics_text: str) -> float:
    found = re.search(r"^dfm_ingress_readiness_probes_total (\S+)$", metrics_text, re.MULTILINE)
    assert found, "no dfm_ingress_readiness_probes_total"
    return float(found.group(1))


async def test_a_readiness_flood_is_served_from_one_probe_a_second(base_env: dict[str, str]) -> None:
    async with ingress_app(settings_of(base_env)) as (client, _):
        await asyncio.sleep(1.1)
        before = probes((await client.get("/metrics")).text)
        answers = await asyncio.gather(*(client.get("/api/health") for _ in range(100)))
        assert {a.status_code for a in answers} == {200}
        assert probes((await client.get("/metrics")).text) - before <= 2


def test_production_serves_no_docs_and_metrics_only_on_the_metrics_port(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {**base_env, "NODE_ENV": "production", "METRICS_PORT": str(metrics_port)}
    with (
        http_service("ingress", env, "INGRESS_PORT", "/api/health", tmp_path / "ingress.log") as (base, _),
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/api/metrics"):
            assert client.get(path).status_code == 404, path
        assert client.get("/api/health").status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert metrics.status_code == 200 and "dfm_webhook_requests_total" in metrics.text


def test_production_docs_can_be_enabled(base_env: dict[str, str], tmp_path: Path) -> None:
    env = {**base_env, "NODE_ENV": "production", "INGRESS_DOCS_ENABLED": "true"}
    with http_service("ingress", env, "INGRESS_PORT", "/api/health", tmp_path / "ingress.log") as (base, _):
        document = httpx.get(base + "/openapi.json", timeout=10)
    assert document.status_code == 200 and "/api/webhooks/ghl" in json.loads(document.text)["paths"]


async def test_failed_admin_auth_from_one_address_gets_429_after_the_limit(base_env: dict[str, str]) -> None:
    settings = settings_of(base_env, ADMIN_RATE_LIMIT_MAX="3")
    async with ingress_app(settings) as (client, _):
        for _ in range(10):  # successful authentication is not counted
            assert (await client.get("/api/admin/events", headers=ADMIN)).status_code == 200
        for attempt in range(3):
            wrong = await client.get("/api/admin/events", headers={"X-DF-ADMIN-SECRET": f"guess-{attempt}"})
            assert wrong.status_code == 401
        throttled = await client.get("/api/admin/events", headers={"X-DF-ADMIN-SECRET": "guess-4"})
        assert throttled.status_code == 429, throttled.text
        assert int(throttled.headers["retry-after"]) >= 1
        jobs = await client.post("/api/jobs/enqueue-pending", headers={"X-DF-JOBS-SECRET": "guess"})
        assert jobs.status_code == 429  # the same address, the other secret
        # while throttled even the right secret is refused: otherwise guessing would go on
        assert (await client.get("/api/admin/events", headers=ADMIN)).status_code == 429
        # webhooks from that address are not affected
        assert (await client.get("/api/health/live")).status_code == 200
