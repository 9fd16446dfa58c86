"""Helpers for ingress tests: an in-process ingress on a real port, signers, stream reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import nats
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from contracts.streams import RECORDER
from contracts.subjects import subject_matches
from services.infra.broker import prepare_topology
from services.infra.consumer import PullConsumer
from services.infra.db.session import create_engine, sync_url
from services.infra.settings import Settings
from services.infra.signing import (
    basic_auth,
    ghl_ed25519_signature,
    ghl_rsa_signature,
    hmac_hex,
    public_pem,
)
from services.ingress.app import create_asgi
from services.recorder.service import Recorder
from services.tooling.embedded import free_port


@dataclass
class Keys:
    """Test key pairs standing in for GHL's."""

    ed: ed25519.Ed25519PrivateKey
    ed_old: ed25519.Ed25519PrivateKey
    rsa: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> Keys:
        return cls(
            ed25519.Ed25519PrivateKey.generate(),
            ed25519.Ed25519PrivateKey.generate(),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    def env(self) -> dict[str, str]:
        """Both Ed25519 public keys configured (rotation) and the RSA one."""
        return {
            "GHL_WEBHOOK_ED25519_PUBLIC_KEY": public_pem(self.ed) + "\n" + public_pem(self.ed_old),
            "GHL_WEBHOOK_RSA_PUBLIC_KEY": public_pem(self.rsa),
        }


@asynccontextmanager
async def running_ingress(settings: Settings, port: int | None = None) -> AsyncIterator[str]:
    """Serve the ingress app on loopback (``port`` or a free one); yields its base URL. The
    topology step runs first with ``settings`` (the ingress only checks the stream exists)."""
    await prepare_topology(settings)
    async with serving(create_asgi(settings), "/api/health", port=port) as base:
        yield base


@asynccontextmanager
async def serving(app: Any, ready_path: str, port: int | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app on loopback until the block ends; waits for ``ready_path`` → 200."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with asyncio.timeout(20):
            while (await client.get(ready_path)).status_code != 200:
                await asyncio.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def running_recorder(settings: Settings) -> AsyncIterator[Recorder]:
    """The recorder consumer in this process (after the topology step with ``settings``: the
    recorder only checks its durable exists)."""
    await prepare_topology(settings)
    engine = create_engine(settings, pool_size=2)
    recorder = Recorder(engine)
    consumer = PullConsumer(settings, RECORDER, recorder.handle, batch=200, fetch_timeout=2.0)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(20):
        await consumer.ready.wait()
    try:
        yield recorder
    finally:
        consumer.stop()
        await task
        await engine.dispose()


async def wait_for_row(database_url: str, table: str, event_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll until the event's row exists (the recorder is asynchronous by design). The bound is
    loose on purpose: it returns at the row. (Rows 60 s late under xdist were the batch
    consumer dropping a batch on nats-py's bare TimeoutError, fixed in services/infra/consumer.py.)"""
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        async with asyncio.timeout(timeout):
            while True:
                row = await conn.fetchrow(f"SELECT * FROM {table} WHERE id = $1::uuid", event_id)
                if row is not None:
                    return dict(row)
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def count_rows(database_url: str, table: str, where: str = "true", *args: Any) -> int:
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args))
    finally:
        await conn.close()


async def stream_messages(nats_url: str, subject: str = "webhooks.>", stream: str | None = None) -> list[Any]:
    """Every message currently on the stream (WEBHOOKS, or JOBS for ``jobs.*``) matching ``subject``."""
    stream = stream or ("JOBS" if subject.startswith("jobs.") else "WEBHOOKS")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        seq = info.state.first_seq
        while seq and seq <= info.state.last_seq:
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                seq += 1
                continue
            if subject_matches(subject, msg.subject):
                out.append(msg)
            seq += 1
        return out
    finally:
        await nc.close()


class Signer:
    """Builds correctly (or deliberately wrongly) authenticated requests per source."""

    def __init__(self, keys: Keys, env: dict[str, str]) -> None:
        self.keys = keys
        self.env = env

    def ghl(self, body: bytes, *, key: ed25519.Ed25519PrivateKey | None = None) -> dict[str, str]:
        return {"x-ghl-signature": ghl_ed25519_signature(key or self.keys.ed, body)}

    def ghl_rsa(self, body: bytes) -> dict[str, str]:
        return {"x-wh-signature": ghl_rsa_signature(self.keys.rsa, body)}

    def aloware(self, password: str | None = None) -> dict[str, str]:
        pw = password or self.env["ALOWARE_WEBHOOK_BASIC_PASS"].split(",")[0]
        return {"authorization": basic_auth(self.env["ALOWARE_WEBHOOK_BASIC_USER"], pw)}

    def verity_hmac(self, body: bytes, header: str, secret: str | None = None) -> dict[str, str]:
        value = secret or self.env["VERITY_WEBHOOK_SECRET"].split(",")[0]
        return {header: hmac_hex(value, body)}

    def for_fixture(self, folder: str, body: bytes, payload: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, query) the real sender of this fixture would use."""
        if folder == "ghl":
            if "locationId" in payload and "type" in payload:
                return self.ghl(body), {}
            return {}, {"token": self.env["GHL_WORKFLOW_WEBHOOK_TOKEN"].split(",")[0]}
        if folder == "ghl-provider-delivery":
            return self.ghl(body), {}
        if folder == "aloware":
            return self.aloware(), {}
        if folder == "texting":
            return self.verity_hmac(body, "x-texting-signature"), {}
        return {"x-df-broadcast-secret": self.env["VERITY_WEBHOOK_SECRET"].split(",")[0]}, {}


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
