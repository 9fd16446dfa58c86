"""Two sandbox apps in one process share nothing: records, request log, faults, rate limits,
OAuth and Clerk tokens all belong to the app that made them (services/sandbox/state.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from tests.support.ingress_rig import serving

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}
ALOWARE_LOOKUP = "/aloware/api/v1/webhook/contact/phone-number"
ALOWARE_QUERY = {"api_token": "sandbox-aloware-token", "phone_number": "+15555550177"}
CLERK_SECRET = {"Authorization": "Bearer sandbox-clerk-secret"}


@pytest.fixture
async def two_sandboxes() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    settings = Settings(ghl_location_id="loc1")
    async with (
        serving(create_sandbox_app(settings), "/_sandbox/calls") as first_url,
        serving(create_sandbox_app(settings), "/_sandbox/calls") as second_url,
        httpx.AsyncClient(base_url=first_url, timeout=10) as first,
        httpx.AsyncClient(base_url=second_url, timeout=10) as second,
    ):
        yield first, second


async def test_records_and_the_request_log_belong_to_one_app(
    two_sandboxes: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = two_sandboxes
    created = await first.post(
        "/ghl/contacts/", headers=GHL, json={"locationId": "loc1", "firstName": "Only", "phone": "+15555550177"}
    )
    assert created.status_code == 201
    assert (await first.post("/_sandbox/aloware/lists", json={"name": "Hot"})).status_code == 200

    assert (await second.get("/_sandbox/ghl/contacts")).json() == []
    assert (await second.get("/_sandbox/aloware/lists")).json() == []
    assert (await second.get("/_sandbox/calls")).json() == []
    assert [c["path"] for c in (await first.get("/_sandbox/calls")).json()] == ["/contacts/"]

    assert (await second.post("/_sandbox/reset")).status_code == 200
    assert [c["id"] for c in (await first.get("/_sandbox/ghl/contacts")).json()] == [created.json()["contact"]["id"]]


async def test_faults_and_rate_limits_belong_to_one_app(
    two_sandboxes: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = two_sandboxes
    await first.post("/_sandbox/faults", json={"vendor": "aloware", "count": 1, "status": 503})
    await first.post("/_sandbox/rate-limit", json={"per_10s": 1})

    assert (await second.get(ALOWARE_LOOKUP, params=ALOWARE_QUERY)).status_code == 404
    users = [await second.get("/ghl/users/", params={"locationId": "loc1"}, headers=GHL) for _ in range(2)]
    assert [u.status_code for u in users] == [200, 200]
    assert users[-1].headers["x-ratelimit-max"] == "100"

    assert (await first.get(ALOWARE_LOOKUP, params=ALOWARE_QUERY)).status_code == 503
    limited = [await first.get("/ghl/users/", params={"locationId": "loc1"}, headers=GHL) for _ in range(2)]
    assert [u.status_code for u in limited] == [200, 429]


async def test_oauth_and_clerk_tokens_belong_to_one_app(
    two_sandboxes: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = two_sandboxes
    form = {
        "client_id": "sandbox-client-id",
        "client_secret": "sandbox-client-secret",
        "user_type": "Location",
        "grant_type": "authorization_code",
        "code": "code-1",
    }
    access = (await first.post("/ghl/oauth/token", data=form)).json()["access_token"]
    provider_bound = {"Authorization": f"Bearer {access}", "Version": "2021-04-15"}
    search = {"locationId": "loc1", "contactId": "nobody"}
    assert (await first.get("/ghl/conversations/search", params=search, headers=provider_bound)).status_code == 200
    assert (await second.get("/ghl/conversations/search", params=search, headers=provider_bound)).status_code == 401

    minted = await first.post("/clerk/v1/sessions/sess_sandbox_0001/tokens", headers=CLERK_SECRET, json={})
    session = {"Authorization": "Bearer " + minted.json()["jwt"]}
    assert (await first.get("/verity/api/leads/1", headers=session)).status_code == 200
    assert (await second.get("/verity/api/leads/1", headers=session)).status_code == 401  # its own signing key


async def test_a_contact_seeded_silently_is_kept_and_a_bad_seed_is_refused(
    two_sandboxes: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    """``POST /_sandbox/ghl/contacts``: a contact the location had before the middleware ran
    (that it sends no webhook is what test_contact_sync's T3 relies on)."""
    first, _ = two_sandboxes
    seeded = await first.post("/_sandbox/ghl/contacts", json={"locationId": "loc1", "phone": "(555) 555-0178"})
    assert seeded.status_code == 201 and seeded.json()["phone"] == "+15555550178"
    assert [c["id"] for c in (await first.get("/_sandbox/ghl/contacts")).json()] == [seeded.json()["id"]]
    json_body = {"Content-Type": "application/json"}
    for bad in (b"{", b"[]", b"null", b'{"firstName": "NoLocation"}'):
        answer = await first.post("/_sandbox/ghl/contacts", content=bad, headers=json_body)
        assert answer.status_code == 422, (bad, answer.text)
    hostile = await first.post(
        "/_sandbox/ghl/contacts", content=b'{"locationId": "loc1\\u0000", "phone": 5}', headers=json_body
    )
    assert hostile.status_code < 500, hostile.text
