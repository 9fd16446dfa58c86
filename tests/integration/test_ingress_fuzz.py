"""Fuzzing the running ingress process: no input produces a 5xx or kills it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.infra.signing import basic_auth, hmac_hex
from services.tooling.embedded import EmbeddedNats
from tests.conftest import TEST_SECRETS
from tests.support.process_rig import http_service

PATHS = [
    "/api/webhooks/ghl",
    "/api/webhooks/ghl/provider-delivery",
    "/api/webhooks/aloware",
    "/api/integrations/aloware/webhook",
    "/api/webhooks/texting",
    "/api/webhooks/broadcast",
]
SECRET = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]


@pytest.fixture(scope="module")
def ingress_process(
    nats_server: EmbeddedNats, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    env = {**TEST_SECRETS, "NATS_URL": nats_server.url, "DATABASE_URL": database_url, "WEBHOOK_MAX_BODY_BYTES": "65536"}
    log = tmp_path_factory.mktemp("ingress-fuzz") / "ingress.log"
    with http_service("ingress", env, "INGRESS_PORT", "/api/health", log) as running:
        yield running


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
known_keys = st.sampled_from(
    [
        "event",
        "type",
        "eventType",
        "id",
        "contactId",
        "contact_id",
        "body",
        "data",
        "message",
        "messageId",
        "phone",
        "broadcastId",
        "timestamp",
        "webhookId",
        "locationId",
        "tags",
        "attachments",
        "startTime",
        "firstName",
        "email",
        "test_payload",
    ]
)
objects = st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=8)
bodies = st.one_of(
    objects.map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)


def credentials(path: str, body: bytes, mode: str) -> dict[str, str]:
    if mode == "none":
        return {}
    if "aloware" in path:
        return {"authorization": basic_auth("aloware", TEST_SECRETS["ALOWARE_WEBHOOK_BASIC_PASS"])}
    if "texting" in path:
        return {"x-texting-signature": hmac_hex(SECRET, body)}
    if "broadcast" in path:
        return {"x-df-broadcast-secret": SECRET}
    return {"x-df-webhook-token": TEST_SECRETS["GHL_WORKFLOW_WEBHOOK_TOKEN"].split(",")[0]}


garbage_headers = st.dictionaries(
    st.sampled_from(
        [
            "x-ghl-signature",
            "x-wh-signature",
            "authorization",
            "x-signature",
            "x-texting-secret",
            "content-type",
            "x-df-webhook-token",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(PATHS), body=bodies, mode=st.sampled_from(["valid", "none", "garbage"]), junk=garbage_headers
)
def test_no_input_gets_a_5xx(
    ingress_process: tuple[str, subprocess.Popen[bytes]],
    path: str,
    body: bytes,
    mode: str,
    junk: dict[str, str],
) -> None:
    base, proc = ingress_process
    headers = junk if mode == "garbage" else credentials(path, body, mode)
    response = httpx.post(base + path, content=body, headers=headers, timeout=10)
    assert response.status_code < 500, (response.status_code, response.text)
    assert response.status_code in (200, 400, 401, 413, 422), response.text
    assert proc.poll() is None
