"""The sandbox vendors behave like the real ones where our tests depend on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from tests.support.ingress_rig import serving

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}


@pytest.fixture
async def sandbox() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(ghl_location_id="loc1")
    async with (
        serving(create_sandbox_app(settings), "/_sandbox/calls") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        yield client


async def test_fake_ghl_enforces_auth_version_and_the_openapi(sandbox: httpx.AsyncClient) -> None:
    body = {"locationId": "loc1", "firstName": "A", "phone": "+15555550111"}
    assert (await sandbox.post("/ghl/contacts/", json=body, headers={"Version": "2021-07-28"})).status_code == 401
    wrong_version = {**GHL, "Version": "2021-04-15"}
    assert (await sandbox.post("/ghl/contacts/", json=body, headers=wrong_version)).status_code == 422
    invalid = await sandbox.post("/ghl/contacts/", json={**body, "notes": "x"}, headers=GHL)
    assert invalid.status_code == 422 and "notes" in str(invalid.json()["message"])
    created = await sandbox.post("/ghl/contacts/", json=body, headers=GHL)
    assert created.status_code == 201
    duplicate = await sandbox.post("/ghl/contacts/", json=body, headers=GHL)
    assert duplicate.status_code == 400
    assert duplicate.json()["meta"]["contactId"] == created.json()["contact"]["id"]
    found = await sandbox.get(
        "/ghl/contacts/search/duplicate", params={"locationId": "loc1", "number": "+15555550111"}, headers=GHL
    )
    assert found.json()["contact"]["id"] == created.json()["contact"]["id"]


async def test_fake_ghl_rate_limits_per_location_with_the_real_headers(sandbox: httpx.AsyncClient) -> None:
    await sandbox.post("/_sandbox/rate-limit", json={"per_10s": 3})
    statuses = []
    for _ in range(4):
        response = await sandbox.get("/ghl/users/", params={"locationId": "loc1"}, headers=GHL)
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["x-ratelimit-interval-milliseconds"] == "10000"


async def test_faults_are_injected_and_consumed(sandbox: httpx.AsyncClient) -> None:
    await sandbox.post("/_sandbox/faults", json={"vendor": "aloware", "count": 1, "status": 503})
    params = {"api_token": "sandbox-aloware-token", "phone_number": "+15555550199"}
    first = await sandbox.get("/aloware/api/v1/webhook/contact/phone-number", params=params)
    second = await sandbox.get("/aloware/api/v1/webhook/contact/phone-number", params=params)
    assert (first.status_code, second.status_code) == (503, 404)
    assert second.json() == {"error": "Contact not found."}


async def test_fake_verity_sends_messages_for_the_right_key(sandbox: httpx.AsyncClient) -> None:
    url = "/verity/api/integrations/df-middleware/send-message"
    assert (await sandbox.post(url, json={"to": "+15555550101", "body": "hi"})).status_code == 401
    sent = await sandbox.post(
        url, json={"to": "+15555550101", "body": "hi"}, headers={"Authorization": "Bearer sandbox-verity-key"}
    )
    assert sent.status_code == 200 and sent.json()["messageId"].startswith("vmsg")


async def test_clients_read_users_from_both_fakes(sandbox: httpx.AsyncClient) -> None:
    from services.clients.aloware import AlowareClient
    from services.clients.ghl import GhlClient

    base = str(sandbox.base_url).rstrip("/")
    ghl = GhlClient(base + "/ghl", "sandbox-ghl-key", "loc1")
    alo = AlowareClient(base + "/aloware/api/v1", "sandbox-aloware-token")
    try:
        assert [u["email"] for u in await ghl.list_users()] == ["chris.rep@example.com", "rafi.agent@example.com"]
        assert [u["id"] for u in await alo.list_users()] == [3100, 3200]
    finally:
        await ghl.aclose()
        await alo.aclose()
