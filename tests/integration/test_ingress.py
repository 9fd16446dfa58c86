"""Ingress over real HTTP with a real nats-server and PostgreSQL (spec/inbound.md §1)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.envelope import WebhookEvent
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats
from services.tooling.sender import refresh
from tests.conftest import WEBHOOK_FIXTURES, load_fixture
from tests.support.contracts import EXPECTED
from tests.support.ingress_rig import (
    Keys,
    Signer,
    count_rows,
    dumps,
    running_ingress,
    running_recorder,
    stream_messages,
    wait_for_row,
)

KEYS = Keys.generate()
FOLDER_SOURCE = {
    "ghl": "ghl",
    "ghl-provider-delivery": "ghl_provider",
    "aloware": "aloware",
    "texting": "texting",
    "broadcast": "broadcast",
}
PATHS = {
    "ghl": "/api/webhooks/ghl",
    "ghl-provider-delivery": "/api/webhooks/ghl/provider-delivery",
    "aloware": "/api/webhooks/aloware",
    "texting": "/api/webhooks/texting",
    "broadcast": "/api/webhooks/broadcast",
}
TABLE = {"texting": "texting_webhook_events", "broadcast": "broadcast_webhook_events"}


def make_settings(base_env: dict[str, str], **overrides: str) -> Settings:
    env = {**base_env, **KEYS.env(), **overrides}
    return Settings(**{k.lower(): v for k, v in env.items()})


@pytest.fixture
def env(base_env: dict[str, str]) -> dict[str, str]:
    return {**base_env, **KEYS.env()}


@pytest.fixture
def signer(env: dict[str, str]) -> Signer:
    return Signer(KEYS, env)


@pytest.fixture
async def ingress(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(env)
    async with (
        running_recorder(settings),
        running_ingress(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        yield client


ACCEPTED_FIXTURES = [f for f, e in EXPECTED.items() if not isinstance(e, str)]
PING_FIXTURES = [f for f, e in EXPECTED.items() if isinstance(e, str)]


@pytest.mark.parametrize("relative", ACCEPTED_FIXTURES)
async def test_fixture_is_accepted_on_its_subject_with_a_row(
    relative: str,
    ingress: httpx.AsyncClient,
    signer: Signer,
    nats_server: EmbeddedNats,
    clean_db: str,
) -> None:
    folder = relative.split("/")[0]
    payload = refresh(load_fixture(relative), FOLDER_SOURCE[folder])
    body = dumps(payload)
    headers, params = signer.for_fixture(folder, body, payload)
    response = await ingress.post(PATHS[folder], content=body, headers=headers, params=params)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "accepted" and answer["success"] is True
    event_id = answer["id"]

    subject = EXPECTED[relative][0]  # type: ignore[index]
    on_stream = [
        m
        for m in await stream_messages(nats_server.url, subject)
        if m.headers and m.headers.get("Dfm-Event-Id") == event_id
    ]
    assert len(on_stream) == 1
    event = WebhookEvent.from_bytes(on_stream[0].data)
    assert on_stream[0].headers["Nats-Msg-Id"] == event.dedupe_key
    assert event.payload == payload
    if folder.startswith("ghl"):
        assert event.payload_raw == body  # raw bytes kept for the Verity forward
    row = await wait_for_row(clean_db, TABLE.get(folder, "webhook_events"), event_id)
    assert row["dedupe_key"] == event.dedupe_key


@pytest.mark.parametrize("relative", PING_FIXTURES)
async def test_test_probes_are_answered_and_not_published(
    relative: str, ingress: httpx.AsyncClient, signer: Signer, nats_server: EmbeddedNats
) -> None:
    folder = relative.split("/")[0]
    body = (WEBHOOK_FIXTURES / relative).read_bytes()
    before = len(await stream_messages(nats_server.url))
    headers, params = signer.for_fixture(folder, body, json.loads(body))
    response = await ingress.post(PATHS[folder], content=body, headers=headers, params=params)
    assert response.status_code == 200
    assert response.json()["reason"] == "test_ping"
    assert len(await stream_messages(nats_server.url)) == before


async def test_replayed_signed_body_is_a_duplicate_and_recorded_once(
    ingress: httpx.AsyncClient, signer: Signer, clean_db: str
) -> None:
    body = dumps(refresh(load_fixture("ghl/ContactUpdate.json"), "ghl"))
    first = await ingress.post(PATHS["ghl"], content=body, headers=signer.ghl(body))
    second = await ingress.post(PATHS["ghl"], content=body, headers=signer.ghl(body))
    assert first.json()["status"] == "accepted"
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert second.json()["id"] == first.json()["id"]
    await wait_for_row(clean_db, "webhook_events", first.json()["id"])
    dedupe = "ghl:wh:" + json.loads(body)["webhookId"]
    assert await count_rows(clean_db, "webhook_events", "dedupe_key = $1", dedupe) == 1


@pytest.mark.parametrize(
    ("folder", "make_headers", "reason"),
    [
        ("ghl", lambda s, b: {}, "missing_signature"),
        ("ghl", lambda s, b: {"x-ghl-signature": base64.b64encode(b"x" * 64).decode()}, "bad_signature"),
        ("ghl", lambda s, b: s.ghl(b + b" "), "bad_signature"),
        ("ghl-provider-delivery", lambda s, b: {}, "missing_signature"),
        ("ghl-provider-delivery", lambda s, b: s.ghl(b"other"), "bad_signature"),
        ("aloware", lambda s, b: {}, "missing_signature"),
        ("aloware", lambda s, b: s.aloware("wrong"), "bad_credentials"),
        ("aloware", lambda s, b: {"authorization": "Basic !!!"}, "bad_credentials"),
        ("texting", lambda s, b: {}, "missing_signature"),
        ("texting", lambda s, b: s.verity_hmac(b, "x-texting-signature", "nope"), "bad_signature"),
        ("texting", lambda s, b: {"x-texting-secret": "nope"}, "bad_credentials"),
        ("broadcast", lambda s, b: s.verity_hmac(b, "x-signature", "nope"), "bad_signature"),
        ("broadcast", lambda s, b: {"x-df-broadcast-secret": "nope"}, "bad_credentials"),
    ],
)
async def test_bad_credentials_are_refused_with_the_reason(
    folder: str, make_headers: Any, reason: str, ingress: httpx.AsyncClient, signer: Signer
) -> None:
    relative = next(f for f in ACCEPTED_FIXTURES if f.startswith(folder + "/"))
    body = dumps(refresh(load_fixture(relative), FOLDER_SOURCE[folder]))
    response = await ingress.post(PATHS[folder], content=body, headers=make_headers(signer, body))
    assert response.status_code == 401
    assert response.json() == {"success": False, "status": "rejected", "error": reason}


async def test_expired_and_future_timestamps_are_refused(ingress: httpx.AsyncClient, signer: Signer) -> None:
    for shift in (timedelta(hours=-3), timedelta(minutes=10)):
        payload = refresh(load_fixture("ghl/ContactCreate.json"), "ghl")
        payload["timestamp"] = (datetime.now(UTC) + shift).isoformat()
        body = dumps(payload)
        response = await ingress.post(PATHS["ghl"], content=body, headers=signer.ghl(body))
        assert response.status_code == 401
        assert response.json()["error"] == "expired"
    # a 429-retried body of 70 minutes ago is still inside the default window
    payload = refresh(load_fixture("ghl/ContactCreate.json"), "ghl")
    payload["timestamp"] = (datetime.now(UTC) - timedelta(minutes=70)).isoformat()
    body = dumps(payload)
    assert (await ingress.post(PATHS["ghl"], content=body, headers=signer.ghl(body))).status_code == 200


async def test_rotated_secrets_and_keys_are_all_accepted(
    ingress: httpx.AsyncClient, signer: Signer, env: dict[str, str]
) -> None:
    for key in (KEYS.ed, KEYS.ed_old):
        body = dumps(refresh(load_fixture("ghl/ContactCreate.json"), "ghl"))
        assert (await ingress.post(PATHS["ghl"], content=body, headers=signer.ghl(body, key=key))).status_code == 200
    body = dumps(refresh(load_fixture("ghl/ContactUpdate.json"), "ghl"))
    assert (await ingress.post(PATHS["ghl"], content=body, headers=signer.ghl_rsa(body))).json()["status"] == "accepted"
    for secret in env["VERITY_WEBHOOK_SECRET"].split(","):
        body = dumps(refresh(load_fixture("texting/message.sent.json"), "texting"))
        headers = {"x-signature": "sha256=" + signer.verity_hmac(body, "h", secret)["h"]}
        assert (await ingress.post(PATHS["texting"], content=body, headers=headers)).status_code == 200
        plain = await ingress.post(
            PATHS["broadcast"],
            content=dumps({"broadcastId": secret, "eventType": "analytics_updated"}),
            headers={"x-df-broadcast-secret": secret},
        )
        assert plain.status_code == 200
    for token in env["GHL_WORKFLOW_WEBHOOK_TOKEN"].split(","):
        body = (WEBHOOK_FIXTURES / "ghl/contact.updated.json").read_bytes()
        response = await ingress.post(PATHS["ghl"], content=body, headers={"x-df-webhook-token": token})
        assert response.status_code == 200


async def test_aloware_password_containing_colons_matches(
    ingress: httpx.AsyncClient, signer: Signer, env: dict[str, str]
) -> None:
    assert ":" in env["ALOWARE_WEBHOOK_BASIC_PASS"]
    body = (WEBHOOK_FIXTURES / "aloware/contact-created.json").read_bytes()
    response = await ingress.post(PATHS["aloware"], content=body, headers=signer.aloware())
    assert response.status_code == 200


async def test_unconfigured_source_fails_closed_unless_explicitly_insecure(
    base_env: dict[str, str],
) -> None:
    no_secret = {k: v for k, v in base_env.items() if k != "VERITY_WEBHOOK_SECRET"}
    body = (WEBHOOK_FIXTURES / "texting/message.received.json").read_bytes()
    async with running_ingress(make_settings(no_secret)) as base, httpx.AsyncClient(base_url=base) as client:
        refused = await client.post(PATHS["texting"], content=body, headers={"x-texting-secret": ""})
        assert refused.status_code == 401
    insecure = make_settings(no_secret, DFM_INSECURE_ALLOW_UNSIGNED="texting")
    async with running_ingress(insecure) as base, httpx.AsyncClient(base_url=base) as client:
        accepted = await client.post(PATHS["texting"], content=body)
        assert accepted.status_code == 200


async def test_legacy_rsa_can_be_switched_off_and_log_only_mode_accepts(
    base_env: dict[str, str], signer: Signer
) -> None:
    body = dumps(refresh(load_fixture("ghl/ContactUpdate.json"), "ghl"))
    async with (
        running_ingress(make_settings(base_env, GHL_ACCEPT_LEGACY_RSA="false")) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post(PATHS["ghl"], content=body, headers=signer.ghl_rsa(body))
        assert response.status_code == 401
        assert response.json()["error"] == "missing_signature"
    async with (
        running_ingress(make_settings(base_env, GHL_WEBHOOK_VERIFY_MODE="log_only")) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post(PATHS["ghl"], content=body)
        assert response.status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'dfm_webhook_auth_failures_total{reason="missing_signature",source="ghl"}' in metrics


async def test_bad_input_gets_a_clear_4xx_and_never_a_5xx(ingress: httpx.AsyncClient, signer: Signer) -> None:
    cases: list[tuple[str, bytes, int, str]] = [
        ("texting", b"{not json", 400, "invalid_json"),
        ("texting", b"\xff\xfe", 400, "body_not_utf8"),  # reasons more precise since issue 14
        ("texting", b"[1,2]", 400, "body_must_be_a_json_object"),
        ("texting", b'{"a": NaN}', 400, "non_finite_number"),
        ("texting", b"[" * 100_000, 400, "json_too_deep"),
        ("broadcast", b'{"eventType":"analytics_updated"}', 422, "broadcastId and eventType are required"),
        ("broadcast", b'{"broadcastId":"","eventType":"x"}', 422, "broadcastId and eventType are required"),
    ]
    for folder, body, status, error in cases:
        headers = signer.verity_hmac(body, "x-texting-signature" if folder == "texting" else "x-broadcast-signature")
        response = await ingress.post(PATHS[folder], content=body, headers=headers)
        assert response.status_code == status, (body[:20], response.text)
        assert response.json()["error"] == error
    provider = load_fixture("ghl-provider-delivery/ProviderOutboundMessage-sms.json")
    for broken in (
        {**provider, "phone": "call me"},
        {**provider, "message": {"text": "x"}},
        {k: v for k, v in provider.items() if k != "messageId"},
    ):
        body = dumps(broken)
        response = await ingress.post(PATHS["ghl-provider-delivery"], content=body, headers=signer.ghl(body))
        assert response.status_code == 422, response.text
    too_big = b'{"x":"' + b"a" * 1_100_000 + b'"}'
    response = await ingress.post(PATHS["texting"], content=too_big, headers=signer.verity_hmac(too_big, "x-signature"))
    assert response.status_code == 413
    assert (await ingress.get(PATHS["texting"])).status_code == 405


async def test_aloware_allow_list_filters_with_normalised_names(base_env: dict[str, str], signer: Signer) -> None:
    settings = make_settings(base_env, ALOWARE_WEBHOOK_ALLOWED_EVENTS="ContactCreated, OutboundPhoneCall-Initiated")
    async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base) as client:

        async def post(relative: str) -> dict[str, Any]:
            payload = {**load_fixture(relative), "nonce": uuid.uuid4().hex}  # not a duplicate
            body = dumps(payload)
            return (await client.post(PATHS["aloware"], content=body, headers=signer.aloware())).json()

        assert (await post("aloware/contact-created.json"))["status"] == "accepted"
        assert (await post("aloware/outbound-phone-call-completed.json"))["status"] == "accepted"
        filtered = await post("aloware/call-disposed.json")
        assert filtered == {"success": True, "status": "ignored", "reason": "event_not_allowed", "ignored": True}
        assert (await post("aloware/inbound-phone-call-completed.json"))["status"] == "ignored"


async def test_foreign_location_and_missing_entity_id_are_recorded_as_ignored(
    ingress: httpx.AsyncClient, signer: Signer, clean_db: str
) -> None:
    payload = refresh(load_fixture("ghl/ContactUpdate.json"), "ghl")
    payload["locationId"] = "someOtherLocation"
    body = dumps(payload)
    answer = (await ingress.post(PATHS["ghl"], content=body, headers=signer.ghl(body))).json()
    assert answer["status"] == "accepted" and answer["reason"] == "foreign_location"
    row = await wait_for_row(clean_db, "webhook_events", answer["id"])
    assert (row["status"], row["outcome"], row["outcome_reason"]) == ("done", "ignored", "foreign_location")
    body = dumps({"event": "Call Disposed", "body": {"note": "no id"}})
    answer = (await ingress.post(PATHS["aloware"], content=body, headers=signer.aloware())).json()
    row = await wait_for_row(clean_db, "webhook_events", answer["id"])
    assert (row["entity_type"], row["outcome_reason"]) == ("unknown", "no_entity_id")


async def test_health_and_metrics_report_dependencies(ingress: httpx.AsyncClient) -> None:
    health = await ingress.get("/api/health")
    assert health.status_code == 200
    checks = health.json()["checks"]
    assert checks["database"] == "ok" and checks["nats"] == "ok" and checks["stream"] == "ok"
    assert checks["config_texting"] == "configured"
    assert (await ingress.get("/api/health/live")).json()["status"] == "ok"
    metrics = (await ingress.get("/api/metrics")).text
    assert "dfm_webhook_requests_total" in metrics
    assert "dfm_ingress_outbox_depth" in metrics


def test_openapi_lists_every_contract_path(tmp_path: Path) -> None:
    from services.ingress.app import create_app

    settings = Settings(database_url="postgresql://u@127.0.0.1:1/x", nats_url="nats://127.0.0.1:1")
    paths = set(create_app(settings).openapi()["paths"])
    assert {
        "/api/webhooks/ghl",
        "/api/webhooks/ghl/provider-delivery",
        "/api/webhooks/aloware",
        "/api/integrations/aloware/webhook",
        "/api/webhooks/texting",
        "/api/webhooks/broadcast",
        "/api/health",
    } <= paths
