"""Consumers answer ``GET /health/live`` and ``GET /health`` on their metrics port (issue #20,
the Kubernetes probes): live while the process answers; ready while NATS is connected, the
fetch loop is free to fetch or has moved within ``DFM_HEALTH_STALL_S``, and PostgreSQL
answers; not ready while draining.

A real ``dfm run recorder`` process: its NATS server is stopped and started again; its batch
is held on a table lock the test takes (a handler that does not come back, as a stuck query
or vendor call would); it is stopped while that batch is in hand.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from contracts.streams import CONSUMERS
from services.infra.broker import prepare_topology
from services.infra.db.session import sync_url
from services.infra.metrics_server import PROBE_TIMEOUT_S
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats
from tests.conftest import TEST_SECRETS
from tests.support.ingress_rig import count_rows, running_ingress
from tests.support.process_rig import http_service
from tests.support.sync_rig import eventually

ROOT = Path(__file__).parents[2]
TEXTING_SECRET = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]
STALL_S = 1.0


async def health(client: httpx.AsyncClient, path: str = "/health") -> tuple[int, dict[str, Any]]:
    answer = await client.get(path)
    return answer.status_code, answer.json()


async def answers(client: httpx.AsyncClient, status: int, check: str | None = None) -> dict[str, Any] | None:
    """The readiness body once it answers ``status`` (and names ``check`` failing, when given)."""
    code, body = await health(client)
    if code != status:
        return None
    if check is not None and body["checks"].get(check, "ok") == "ok":
        return None
    return body


async def test_readiness_follows_the_nats_connection(clean_db: str, tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    try:
        settings = Settings(nats_url=server.url, database_url=clean_db)
        await prepare_topology(settings)  # `dfm migrate` makes the streams and durables
        env = {"NATS_URL": server.url, "DATABASE_URL": clean_db, "DFM_HEALTH_STALL_S": str(STALL_S)}
        with http_service("recorder", env, "METRICS_PORT", "/health", tmp_path / "recorder.log") as (base, _):
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                code, body = await health(client)
                assert code == 200 and body["checks"] == {"nats": "ok", "fetch_loop": "ok", "postgres": "ok"}
                server.kill()
                down = await eventually(lambda: answers(client, 503, "nats"), timeout=5)
                assert down["checks"]["nats"] != "ok" and down["checks"]["postgres"] == "ok"
                assert (await health(client, "/health/live"))[0] == 200  # alive: nothing to restart
                server.start()  # same port, same store
                back = await eventually(lambda: answers(client, 200), timeout=30)
                assert back["checks"]["nats"] == "ok"
    finally:
        server.stop()


async def test_a_wedged_fetch_loop_turns_readiness_off_and_draining_keeps_it_off(
    base_env: dict[str, str], settings: Settings, clean_db: str, tmp_path: Path
) -> None:
    env = {
        **base_env,
        "DFM_HEALTH_STALL_S": str(STALL_S),
        "DB_LOCK_TIMEOUT_MS": "120000",
        "DB_STATEMENT_TIMEOUT_MS": "120000",
        "DFM_DRAIN_TIMEOUT_S": "60",
    }
    locker = await asyncpg.connect(sync_url(clean_db))
    try:
        async with running_ingress(settings) as ingress_url, httpx.AsyncClient(base_url=ingress_url) as ingress:

            async def send() -> None:
                body = {
                    "eventType": "message.received",
                    "messageId": f"wedge-{uuid.uuid4().hex}",
                    "from": "+15555550101",
                    "to": "+15555550100",
                    "body": "hi",
                    "timestamp": "2026-01-01T00:00:00Z",
                }
                answer = await ingress.post(
                    "/api/webhooks/texting", json=body, headers={"X-Texting-Secret": TEXTING_SECRET}
                )
                assert answer.status_code == 200, answer.text

            with http_service("recorder", env, "METRICS_PORT", "/health", tmp_path / "recorder.log") as (base, proc):
                async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                    # the batch waits on a lock: the loop holds it and fetches nothing more
                    lock = locker.transaction()
                    await lock.start()
                    await locker.execute("LOCK TABLE texting_webhook_events IN ACCESS EXCLUSIVE MODE")
                    await send()
                    wedged = await eventually(lambda: answers(client, 503, "fetch_loop"), timeout=STALL_S + 10)
                    assert wedged["checks"]["nats"] == "ok" and wedged["checks"]["postgres"] == "ok"
                    await lock.rollback()  # the insert goes through, the loop moves again
                    await eventually(lambda: answers(client, 200), timeout=15)

                    async def recorded() -> bool:
                        return await count_rows(clean_db, "texting_webhook_events") == 1

                    await eventually(recorded)

                    # stopping with a batch in hand: not ready while it drains, live throughout
                    lock = locker.transaction()
                    await lock.start()
                    await locker.execute("LOCK TABLE texting_webhook_events IN ACCESS EXCLUSIVE MODE")
                    await send()
                    await eventually(lambda: answers(client, 503, "fetch_loop"), timeout=STALL_S + 10)
                    proc.send_signal(signal.SIGTERM)
                    draining = await eventually(lambda: answers(client, 503, "draining"), timeout=10)
                    assert draining["checks"]["draining"] != "ok"
                    assert (await health(client, "/health/live"))[0] == 200
                    await lock.rollback()
                    assert await asyncio.to_thread(proc.wait, 30) == 0
        assert await count_rows(clean_db, "texting_webhook_events") == 2  # the drained batch was written
    finally:
        await locker.close()


async def test_liveness_and_readiness_are_served_on_the_metrics_port_of_every_consumer_kind(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    """A sync consumer (FastStream's concurrent pull front) reports the same checks."""
    with http_service("verity-sync", base_env, "METRICS_PORT", "/health", tmp_path / "verity.log") as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            code, body = await health(client)
            assert code == 200 and body["checks"] == {"nats": "ok", "fetch_loop": "ok", "postgres": "ok"}
            assert (await health(client, "/health/live")) == (200, {"status": "live"})
            assert "dfm_process_info" in (await client.get("/metrics")).text


def test_the_kubernetes_probes_of_every_consumer_ask_its_metrics_port() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "deployments.yaml").read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for spec in CONSUMERS:  # a lane's durable is served by its service's pods (issue #18)
        [container] = deployments[spec.owner]["spec"]["template"]["spec"]["containers"]
        assert "metrics" in {p["name"] for p in container["ports"]}, spec.durable
        live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        assert (live["port"], live["path"]) == ("metrics", "/health/live"), spec.durable
        assert (ready["port"], ready["path"]) == ("metrics", "/health"), spec.durable
        # the answer (a 503 naming the check) comes before the kubelet gives up on the request
        assert container["readinessProbe"]["timeoutSeconds"] > PROBE_TIMEOUT_S, spec.durable
