"""Logs: JSON lines with event and correlation ids; no bodies, phones, e-mails or secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from services.infra.logging import REDACTED, redact, scrub_text
from services.infra.signing import hmac_hex
from services.tooling.embedded import EmbeddedNats, free_port
from tests.conftest import TEST_SECRETS


def test_redaction_masks_sensitive_keys_at_any_depth() -> None:
    event = {
        "event": "x",
        "phone": "+15555550101",
        "nested": {"email": "a@example.com", "items": [{"body": "hello", "ok": 1}]},
        "Authorization": "Bearer s3cret",
    }
    out = redact(None, "info", dict(event))
    assert out["phone"] == REDACTED and out["Authorization"] == REDACTED
    assert out["nested"]["email"] == REDACTED
    assert out["nested"]["items"][0] == {"body": REDACTED, "ok": 1}
    assert out["event"] == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call from +15555550177 ended", f"call from {REDACTED} ended"),
        ("dial (555) 555-0101 now", f"dial ({REDACTED} now"),
        ("to 1-555-555-0101", f"to {REDACTED}"),
        ("mail ada@example.com please", f"mail {REDACTED} please"),
        ("nats://dfm:s3cret@10.0.0.7:4222", "nats://dfm:***@10.0.0.7:4222"),
        ("Authorization: Bearer abc.def-ghi", f"Authorization: Bearer {REDACTED}"),
        ("GET /x?api_key=k1&limit=5", f"GET /x?api_key={REDACTED}&limit=5"),
        # what must stay readable: addresses, ports, times, ids, user of a URL
        ("listening on 192.168.100.200:3002", "listening on 192.168.100.200:3002"),
        ("at 2025-03-04 15:12:00+00:00", "at 2025-03-04 15:12:00+00:00"),
        ("event 123e4567-e89b-12d3-a456-426614174000", "event 123e4567-e89b-12d3-a456-426614174000"),
        ("nats://observer@nats.example.com:4222", "nats://observer@nats.example.com:4222"),
        ("stream_seq 4821 took 12.5 ms", "stream_seq 4821 took 12.5 ms"),
    ],
)
def test_free_text_masks_phones_addresses_and_credentials_and_keeps_the_rest(text: str, expected: str) -> None:
    assert scrub_text(text) == expected
    assert redact(None, "info", {"event": text, "detail": [text]}) == {"event": expected, "detail": [expected]}


def test_ingress_logs_ids_and_never_the_payload(nats_server: EmbeddedNats, database_url: str) -> None:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        **TEST_SECRETS,
        "NATS_URL": nats_server.url,
        "DATABASE_URL": database_url,
        "INGRESS_PORT": str(port),
        "LOG_LEVEL": "info",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", "ingress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    secret = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]
    body = json.dumps(
        {
            "eventType": "message.received",
            "messageId": f"log-{port}",
            "from": "+15555550177",
            "to": "+15555550100",
            "body": "my email is private@example.com",
        }
    ).encode()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(400):
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    assert proc.poll() is None, "ingress exited during start-up"
                time.sleep(0.05)  # start-up poll of a child process
            answer = client.post(
                "/api/webhooks/texting", content=body, headers={"x-texting-signature": hmac_hex(secret, body)}
            ).json()
            client.post("/api/webhooks/texting", content=body, headers={"x-texting-secret": "wrong"})
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    text = err.decode()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == len(text.splitlines())  # every line of the process is a JSON record
    accepted = [entry for entry in lines if entry.get("event") == "webhook_accepted"]
    assert accepted and accepted[0]["event_id"] == answer["id"]
    assert accepted[0]["correlation_id"] == answer["id"]
    assert accepted[0]["service"] == "ingress" and "timestamp" in accepted[0]
    assert any(e.get("event") == "webhook_unauthorized" for e in lines)
    for needle in ("+15555550177", "private@example.com", secret, "wrong"):
        assert needle not in text
