"""Production refuses insecure switches, and shows what it runs with (issue #15 part 3;
security-audit F13, F15).

``DFM_INSECURE_ALLOW_UNSIGNED`` and ``GHL_WEBHOOK_VERIFY_MODE=log_only`` used to work under
``NODE_ENV=production`` and showed nowhere: a forgotten debugging switch left the endpoint
that sends SMS open. Now such a process stops at start with one ``dfm: error:`` line naming
the variable and exit code 2, unless ``DFM_ALLOW_INSECURE_IN_PRODUCTION`` names it; the
ingress health shows the mode, the insecure sources, the verify mode and the GHL key counts.
The plain shared secret of texting/broadcast is off by default in production, and the secret
sent to Verity on the F-1 forward is its own setting there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.infra.settings import ConfigError, load_settings
from services.infra.signing import hmac_hex
from services.tooling.embedded import free_port
from tests.conftest import TEST_SECRETS, load_fixture
from tests.support.ingress_rig import Keys
from tests.support.process_rig import ROOT, http_service

KEYS = Keys.generate()
SECRET = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]
TEXTING = json.dumps(load_fixture("texting/message.received.json")).encode()


def start_ingress(env: dict[str, str]) -> subprocess.CompletedProcess[str] | None:
    """``dfm run ingress`` with ``env``: its result when it exits within 20 s, None when it
    kept running (it started)."""
    full = {"PATH": os.environ["PATH"], "METRICS_PORT": "0", "INGRESS_PORT": str(free_port()), **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", "ingress"],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DFM_INSECURE_ALLOW_UNSIGNED", "texting"),
        ("GHL_WEBHOOK_VERIFY_MODE", "log_only"),
    ],
)
def test_production_with_an_insecure_switch_refuses_to_start_in_one_line(
    variable: str, value: str, base_env: dict[str, str]
) -> None:
    result = start_ingress({**base_env, "NODE_ENV": "production", variable: value})
    assert result is not None, f"the ingress started in production with {variable}={value}"
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dfm: error: {variable}") and "DFM_ALLOW_INSECURE_IN_PRODUCTION" in lines[0]


def test_an_override_for_one_switch_does_not_cover_another(base_env: dict[str, str]) -> None:
    result = start_ingress(
        {
            **base_env,
            "NODE_ENV": "production",
            "DFM_INSECURE_ALLOW_UNSIGNED": "texting",
            "GHL_WEBHOOK_VERIFY_MODE": "log_only",
            "DFM_ALLOW_INSECURE_IN_PRODUCTION": "DFM_INSECURE_ALLOW_UNSIGNED",
        }
    )
    assert result is not None and result.returncode == 2, result
    assert result.stderr.strip().startswith("dfm: error: GHL_WEBHOOK_VERIFY_MODE")


def test_an_override_naming_no_switch_is_refused() -> None:
    with pytest.raises(ConfigError, match="DFM_ALLOW_INSECURE_IN_PRODUCTION"):
        load_settings(dfm_allow_insecure_in_production="DFM_INSECURE_ALLOW_UNSINGED")  # a typo


def test_the_switches_still_work_outside_production() -> None:
    settings = load_settings(dfm_insecure_allow_unsigned="texting", ghl_webhook_verify_mode="log_only")
    assert settings.dfm_insecure_allow_unsigned == ["texting"]


def test_with_the_override_it_starts_and_health_shows_mode_switches_and_key_counts(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **base_env,
        **KEYS.env(),
        "NODE_ENV": "production",
        "DFM_INSECURE_ALLOW_UNSIGNED": "broadcast",
        "GHL_WEBHOOK_VERIFY_MODE": "log_only",
        "DFM_ALLOW_INSECURE_IN_PRODUCTION": "DFM_INSECURE_ALLOW_UNSIGNED,GHL_WEBHOOK_VERIFY_MODE",
    }
    with (
        http_service("ingress", env, "INGRESS_PORT", "/api/health", tmp_path / "ingress.log") as (base, _),
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        health = client.get("/api/health").json()
        assert health["mode"] == "production"
        assert health["insecure_sources"] == ["broadcast"]
        assert health["verify_mode"] == "log_only"
        assert health["ghl_keys"] == {"ed25519": 2, "rsa": 1}
        assert health["plain_secret_sources"] == []
        assert set(health["insecure_overrides"]) == {"DFM_INSECURE_ALLOW_UNSIGNED", "GHL_WEBHOOK_VERIFY_MODE"}
        # production: the plain shared secret is refused by default, the HMAC signature works
        plain = client.post("/api/webhooks/texting", content=TEXTING, headers={"x-texting-secret": SECRET})
        assert plain.status_code == 401, plain.text
        signed = client.post(
            "/api/webhooks/texting", content=TEXTING, headers={"x-texting-signature": hmac_hex(SECRET, TEXTING)}
        )
        assert signed.status_code == 200, signed.text


def test_development_health_shows_its_mode_and_the_plain_secret_sources(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    with http_service("ingress", base_env, "INGRESS_PORT", "/api/health", tmp_path / "ingress.log") as (base, _):
        health = httpx.get(base + "/api/health", timeout=10).json()
    assert health["mode"] == "development"
    assert health["insecure_sources"] == [] and health["verify_mode"] == "enforce"
    assert health["plain_secret_sources"] == ["texting", "broadcast"]


def test_plain_shared_secrets_default_off_in_production_only() -> None:
    production = load_settings(node_env="production")
    assert not production.texting_accept_plain_secret and not production.broadcast_accept_plain_secret
    development = load_settings()
    assert development.texting_accept_plain_secret and development.broadcast_accept_plain_secret
    chosen = load_settings(node_env="production", texting_accept_plain_secret="true")
    assert chosen.texting_accept_plain_secret and not chosen.broadcast_accept_plain_secret


def test_the_secret_sent_to_verity_is_its_own_setting_in_production() -> None:
    from services.verity_sync.service import forward_secret

    both = load_settings(verity_webhook_secret="inbound", verity_forward_secret="outbound", node_env="production")
    assert forward_secret(both) == "outbound"
    inbound_only = load_settings(verity_webhook_secret="inbound,older", node_env="production")
    assert forward_secret(inbound_only) is None  # never the inbound secret in production
    development = load_settings(verity_webhook_secret="inbound,older")
    assert forward_secret(development) == "inbound"  # the old behaviour, with a warning
