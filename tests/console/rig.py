"""The console under test: the app over httpx (in process), a signed-in client, and rows
written straight into the tables the pages read."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from contracts.tokens import normalise_token
from services.console.app import create_console_app
from services.console.auth import hash_password
from services.infra.db.session import sync_url
from services.infra.settings import Settings

OPERATORS = {"alice": "alice-password-1", "bob": "bob-password-22"}
# cheap scrypt for the suite (the real default costs ~0.1 s a check)
OPERATOR_HASHES = ",".join(f"{n}:{hash_password(p, n=1024)}" for n, p in OPERATORS.items())
CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def console_settings(base_env: dict[str, str], **extra: Any) -> Settings:
    env = {
        **{k.lower(): v for k, v in base_env.items()},
        "console_operators": OPERATOR_HASHES,
        "console_session_secret": "s" * 40,
        **{k.lower(): v for k, v in extra.items()},
    }
    return Settings(**env)


@asynccontextmanager
async def console_client(
    settings: Settings, base_url: str = "http://console.test", client: tuple[str, int] = ("127.0.0.1", 50000)
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_console_app(settings)
    transport = httpx.ASGITransport(app=app, client=client)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=base_url, follow_redirects=False) as c:
            c.app = app  # type: ignore[attr-defined]
            yield c
    finally:
        await app.state.console.bus.close()
        await app.state.console.engine.dispose()


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def sign_in(
    client: httpx.AsyncClient, name: str = "alice", password: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    page = await client.get("/signin", headers=headers)
    return await client.post(
        "/signin",
        headers=headers,
        data={
            "username": name,
            "password": OPERATORS.get(name, "x") if password is None else password,
            "csrf_token": csrf_of(page.text),
            "next": "/overview",
        },
    )


async def signed_in(client: httpx.AsyncClient, name: str = "alice") -> str:
    """Sign in; the session's CSRF token."""
    answer = await sign_in(client, name)
    assert answer.status_code == 303, answer.text
    return csrf_of((await client.get("/overview")).text)


async def fetch(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows as dicts, JSONB decoded."""
    conn = await asyncpg.connect(sync_url(database_url))
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def execute(database_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def insert_event(
    database_url: str,
    *,
    source: str = "ghl",
    event_type: str = "ContactUpdate",
    entity_id: str = "ghlContact0001",
    status: str = "dead",
    payload: dict[str, Any] | None = None,
    received_at: datetime | None = None,
    entity_type: str = "contact",
) -> str:
    """A webhook_events row as the recorder writes one (no stream message: replays rebuild it)."""
    event_id = str(uuid.uuid4())
    body = payload or {
        "type": event_type,
        "id": entity_id,
        "locationId": "ghlLocationDemo00001",
        "email": "jane.doe@example.com",
        "phone": "+15550100001",
        "firstName": "Jane",
    }
    canonical = {"ghl": "ghl.contact.updated", "aloware": "aloware.contact.updated"}.get(source, "ghl.contact.updated")
    await execute(
        database_url,
        """
        INSERT INTO webhook_events (id, received_at, source, event_type, event_token, canonical_type, entity_type,
                                    entity_id, location_id, payload_json, dedupe_key, status, attempts, error_message)
        VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, 'ghlLocationDemo00001', $9::jsonb, $10, $11, 3, $12)""",
        event_id,
        received_at or datetime.now(UTC) - timedelta(minutes=5),
        source,
        event_type,
        normalise_token(event_type),
        canonical,
        entity_type,
        entity_id,
        json.dumps(body),
        f"test:{event_id}",
        status,
        "GHL 500 at contact.update" if status in ("error", "dead") else None,
    )
    return event_id


async def eventually(check: Any, timeout: float = 20, interval: float = 0.1) -> Any:
    """Poll an async predicate until it returns something truthy (the jobs service is asynchronous)."""
    import asyncio

    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(interval)


async def insert_attempt(
    database_url: str,
    event_id: str,
    *,
    consumer: str = "aloware-sync",
    status: str = "error",
    calls: list[dict[str, Any]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    detail: str | None = "aloware 500 at contact.upsert",
) -> None:
    """An event_attempts row as the delivery ledger writes one, with its sync_log row."""
    started = datetime.now(UTC) - timedelta(minutes=4)
    await execute(
        database_url,
        """
        INSERT INTO event_attempts (event_id, consumer, attempt, stream_seq, num_delivered, started_at, finished_at,
                                    status, outcome, detail, vendor_calls, mappings)
        VALUES ($1::uuid, $2, 1, 7, 1, $3, $4, $5, NULL, $6, $7::jsonb, $8::jsonb)""",
        event_id,
        consumer,
        started,
        started + timedelta(milliseconds=420),
        status,
        detail,
        json.dumps(calls or []),
        json.dumps(mappings or []),
    )
    await execute(
        database_url,
        """
        INSERT INTO sync_log (direction, entity_type, entity_id, source_id, target_id, status, started_at,
                              finished_at, error_message, correlation_id, rule, attempt)
        VALUES ('ghl_to_aloware', 'contact', 'ghlContact0001', 'ghlContact0001', NULL, 'error', $1, $1,
                'aloware 500', $2, 'CG-3', 1)""",
        started + timedelta(milliseconds=400),
        event_id,
    )
