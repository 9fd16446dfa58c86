"""A malformed GHL webhook key stops start-up (issue #14 item 8).

A ``GHL_WEBHOOK_ED25519_PUBLIC_KEY`` that parsed to no key let the ingress start, say
``ghl: configured`` in health, and then answer every genuine GHL webhook 401. Like every
other bad setting it is now one ``dfm: error:`` line naming the variable and exit code 2,
from ``Settings`` itself, so every entry point refuses it the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.infra.settings import ConfigError, load_settings
from services.infra.signing import public_pem
from services.tooling.embedded import free_port
from tests.support.ingress_rig import Keys
from tests.support.process_rig import ROOT, http_service

KEYS = Keys.generate()
ED = "GHL_WEBHOOK_ED25519_PUBLIC_KEY"
RSA = "GHL_WEBHOOK_RSA_PUBLIC_KEY"
GOOD_ED = public_pem(KEYS.ed)
GOOD_RSA = public_pem(KEYS.rsa)
BROKEN_BLOCK = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----"
TRUNCATED = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"

MALFORMED = [
    pytest.param(ED, "not a key", id="ed25519-no-pem-at-all"),
    pytest.param(ED, BROKEN_BLOCK, id="ed25519-block-that-is-not-a-key"),
    pytest.param(ED, GOOD_RSA, id="ed25519-holding-an-rsa-key"),
    pytest.param(ED, GOOD_ED + "\n" + TRUNCATED, id="ed25519-second-key-cut-off"),
    pytest.param(RSA, "-----BEGIN PUBLIC KEY-----", id="rsa-cut-off"),
    pytest.param(RSA, GOOD_ED, id="rsa-holding-an-ed25519-key"),
]


@pytest.mark.parametrize(("variable", "value"), MALFORMED)
def test_dfm_run_ingress_with_a_malformed_key_exits_2_naming_the_variable(
    variable: str, value: str, base_env: dict[str, str]
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "METRICS_PORT": "0",
        "INGRESS_PORT": str(free_port()),
        **base_env,
        variable: value,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", "ingress"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the ingress started with a malformed {variable}")
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"dfm: error: {variable} is malformed") and "expected" in lines[0]


@pytest.mark.parametrize(("variable", "value"), MALFORMED)
def test_settings_refuse_the_malformed_key_for_every_entry_point(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} is malformed"):
        load_settings(**{variable.lower(): value})


def test_rotated_keys_escaped_newlines_and_the_defaults_are_accepted() -> None:
    other = public_pem(ed25519.Ed25519PrivateKey.generate())
    load_settings()  # GHL's published keys
    load_settings(ghl_webhook_ed25519_public_key=GOOD_ED + "\n" + other, ghl_webhook_rsa_public_key=GOOD_RSA)
    load_settings(ghl_webhook_ed25519_public_key=GOOD_ED.replace("\n", "\\n"))  # one-line .env form


def test_dfm_run_ingress_with_valid_keys_starts(base_env: dict[str, str], tmp_path: Path) -> None:
    with http_service(
        "ingress", {**base_env, **KEYS.env()}, "INGRESS_PORT", "/api/health", tmp_path / "ingress.log"
    ) as (_, proc):
        assert proc.poll() is None
