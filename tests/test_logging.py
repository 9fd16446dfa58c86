"""Logs: JSON lines with event and correlation ids; no bodies, phones, e-mails or secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from services.infra.logging import REDACTED, redact
from services.infra.signing import hmac_hex
from services.tooling.embedded import EmbeddedNats, free_port
from tests.conftest import TEST_SECRETS


def test_redaction_masks_sensitive_keys_at_any_depth() -> None:
    event = {"event": "x", "phone": "+15555550101", "nested": {"email": "a@example.com",
             "items": [{"body": "hello", "ok": 1}]}, "Authorization": "Bearer s3cret"}
    out = redact(None, "info", dict(event))
    assert out["phone"] == REDACTED and out["Authorization"] == REDACTED
    assert out["nested"]["email"] == REDACTED
    assert out["nested"]["items"][0] == {"body": REDACTED, "ok": 1}
    assert out["event"] == "x"


def test_ingress_logs_ids_and_never_the_payload(nats_server: EmbeddedNats, database_url: str) -> None:
    port = free_port()
    env = {"PATH": os.environ["PATH"], **TEST_SECRETS, "NATS_URL": nats_server.url,
           "DATABASE_URL": database_url, "INGRESS_PORT": str(port), "LOG_LEVEL": "info"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "ingress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    secret = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]
    body = json.dumps({"eventType": "message.received", "messageId": f"log-{port}",
                       "from": "+15555550177", "to": "+15555550100",
                       "body": "my email is private@example.com"}).encode()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(400):
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    assert proc.poll() is None, "ingress exited during start-up"
                time.sleep(0.05)  # start-up poll of a child process
            answer = client.post("/api/webhooks/texting", content=body,
                                 headers={"x-texting-signature": hmac_hex(secret, body)}).json()
            client.post("/api/webhooks/texting", content=body, headers={"x-texting-secret": "wrong"})
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    text = err.decode()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    accepted = [entry for entry in lines if entry.get("event") == "webhook_accepted"]
    assert accepted and accepted[0]["event_id"] == answer["id"]
    assert accepted[0]["correlation_id"] == answer["id"]
    assert accepted[0]["service"] == "ingress" and "timestamp" in accepted[0]
    assert any(e.get("event") == "webhook_unauthorized" for e in lines)
    for needle in ("+15555550177", "private@example.com", secret, "wrong"):
        assert needle not in text
