"""Configuration: one clear line and exit 2 for a missing or malformed variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.infra.settings import ConfigError, Settings, load_settings


def run_dfm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (["migrate", "current"], {}, "DATABASE_URL"),
        (["migrate", "upgrade", "head"], {}, "DATABASE_URL"),
        (["migrate", "current"], {"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL"),
        (["up"], {"INGRESS_PORT": "not-a-port"}, "INGRESS_PORT"),
        (["up"], {"DB_MAX_CONNECTIONS": "0"}, "DB_MAX_CONNECTIONS"),
    ],
)
def test_missing_or_malformed_variable_prints_one_line_and_exits_2(
    args: list[str], env: dict[str, str], variable: str
) -> None:
    result = run_dfm(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dfm: error: ")
    assert variable in lines[0]
    assert "expected" in lines[0] or "should be" in lines[0] or "Input" in lines[0]


def test_service_requirements_name_the_first_missing_variable() -> None:
    settings = Settings(database_url="postgresql://u@h/db", nats_url="nats://127.0.0.1:1")
    with pytest.raises(ConfigError, match="DF_ADMIN_SECRET is required"):
        settings.require_for("ingress")
    settings.require_for("recorder")


def test_secrets_allow_comma_separated_rotation_and_stay_secret() -> None:
    settings = load_settings(df_admin_secret="new-one, old-one", x_df_jobs_secret="j")
    assert [s.get_secret_value() for s in settings.df_admin_secret] == ["new-one", "old-one"]
    assert "new-one" not in repr(settings)
    assert "new-one" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("raw", "list_sync", "power_dialer"),
    [("false", False, False), ("true", True, True), ("TRUE", True, False), ("no", True, False)],
)
def test_feature_flags_keep_the_original_string_semantics(raw: str, list_sync: bool, power_dialer: bool) -> None:
    settings = load_settings(enable_agent_list_sync=raw, enable_power_dialer_lists=raw)
    assert settings.enable_agent_list_sync is list_sync
    assert settings.enable_power_dialer_lists is power_dialer


def test_invalid_choices_stop_the_start_naming_each_variable() -> None:
    # issue #20 replaced the original's silent fallback (bogus -> "merge", "fuzzy" ->
    # "case_insensitive", invalid JSON -> {}) with an error naming every variable at once
    with pytest.raises(ConfigError) as raised:
        load_settings(contact_source_of_truth="bogus", tag_match_mode="fuzzy", aloware_status_to_sequence="{x")
    assert [p.split()[0] for p in raised.value.problems] == [
        "ALOWARE_STATUS_TO_SEQUENCE",
        "CONTACT_SOURCE_OF_TRUTH",
        "TAG_MATCH_MODE",
    ]


def test_nats_url_accepts_several_servers() -> None:
    settings = load_settings(nats_url="nats://a:4222, nats://b:4222")
    assert settings.nats_url == ["nats://a:4222", "nats://b:4222"]
