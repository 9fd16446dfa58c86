"""Configuration errors all at once, and no silent fallback (issue #20).

``dfm config check [service]`` and every ``dfm run <service>`` start list every missing or
malformed variable, one line each naming it, and exit 2; an unknown ``CONTACT_SOURCE_OF_TRUTH``
or ``TAG_MATCH_MODE`` and invalid ``ALOWARE_STATUS_TO_SEQUENCE`` JSON stop the process instead
of quietly becoming the default. ``dfm`` reads ``./.env``, the environment overriding it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.infra.settings import ConfigError, load_settings

VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]*)\b")

# a ghl-sync that would start: every variable it needs, pointing nowhere (it stops before connecting)
GHL_SYNC_ENV = {
    "DATABASE_URL": "postgresql://dfm@127.0.0.1:1/dfm",
    "NATS_URL": "nats://127.0.0.1:1",
    "GHL_API_KEY": "k",
    "GHL_LOCATION_ID": "loc",
}

# a broken environment for the ingress: malformed, missing, unknown choices, bad JSON, a refusal
BROKEN = {
    "DATABASE_URL": "mysql://dfm:hunter2@db/dfm",  # malformed (and its password never shown)
    "INGRESS_PORT": "not-a-port",  # malformed
    "CONTACT_SOURCE_OF_TRUTH": "bogus",  # unknown choice
    "TAG_MATCH_MODE": "fuzzy",  # unknown choice
    "ALOWARE_STATUS_TO_SEQUENCE": "{bad",  # invalid JSON
    "NODE_ENV": "production",
    "GHL_WEBHOOK_VERIFY_MODE": "log_only",  # refused in production
    # NATS_URL, DF_ADMIN_SECRET and X_DF_JOBS_SECRET missing
}
BROKEN_VARIABLES = {
    "DATABASE_URL",
    "INGRESS_PORT",
    "CONTACT_SOURCE_OF_TRUTH",
    "TAG_MATCH_MODE",
    "ALOWARE_STATUS_TO_SEQUENCE",
    "GHL_WEBHOOK_VERIFY_MODE",
    "NATS_URL",
    "DF_ADMIN_SECRET",
    "X_DF_JOBS_SECRET",
}


def dfm(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``dfm *args`` with only ``env`` (no stack.env, no .env unless ``cwd`` holds one)."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**base, "DFM_DATA_DIR": "/nonexistent", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def named(lines: list[str]) -> list[str]:
    """The variable each line names first."""
    found = []
    for line in lines:
        match = VARIABLE.match(line)
        assert match, f"a problem line that does not start with its variable: {line!r}"
        found.append(match.group(1))
    return found


def test_config_check_lists_every_problem_of_a_broken_environment_in_one_run(tmp_path: Path) -> None:
    result = dfm("config", "check", "ingress", env=BROKEN, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert sorted(named(lines)) == sorted(BROKEN_VARIABLES), result.stdout  # each once, nothing else
    assert "hunter2" not in result.stdout + result.stderr
    by_name = dict(zip(named(lines), lines, strict=True))
    assert "is required" in by_name["NATS_URL"] and "is malformed" in by_name["DATABASE_URL"]
    assert "'ghl', 'aloware' or 'merge'" in by_name["CONTACT_SOURCE_OF_TRUTH"]
    assert "JSON" in by_name["ALOWARE_STATUS_TO_SEQUENCE"]


def test_the_same_report_stops_dfm_run_one_error_line_per_problem(tmp_path: Path) -> None:
    result = dfm("run", "ingress", env=BROKEN, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith("dfm: error: ") for line in lines), result.stderr
    assert sorted(named([line.removeprefix("dfm: error: ") for line in lines])) == sorted(BROKEN_VARIABLES)


def test_config_check_of_a_good_environment_is_one_ok_line(tmp_path: Path) -> None:
    result = dfm("config", "check", "ghl-sync", env=GHL_SYNC_ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines() == ["OK: the configuration for ghl-sync is complete and valid"]
    # without a service only the values are checked (nothing is required of every process)
    plain = dfm("config", "check", env={}, cwd=tmp_path)
    assert plain.returncode == 0 and plain.stdout.startswith("OK: "), plain.stdout + plain.stderr


def test_config_check_as_json_is_one_document(tmp_path: Path) -> None:
    result = dfm("config", "check", "ingress", "--output", "json", env=BROKEN, cwd=tmp_path)
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["service"] == "ingress"
    assert sorted(p["variable"] for p in report["problems"]) == sorted(BROKEN_VARIABLES)
    good = json.loads(dfm("config", "check", "ghl-sync", "-o", "json", env=GHL_SYNC_ENV, cwd=tmp_path).stdout)
    assert good == {"ok": True, "service": "ghl-sync", "problems": []}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONTACT_SOURCE_OF_TRUTH", "bogus"),
        ("TAG_MATCH_MODE", "fuzzy"),
        ("ALOWARE_STATUS_TO_SEQUENCE", "{bad"),
        ("ALOWARE_STATUS_TO_SEQUENCE", '["a list"]'),
        ("ALOWARE_STATUS_TO_SEQUENCE", '{"hot": 7}'),
    ],
)
def test_a_bad_setting_stops_ghl_sync_naming_it_instead_of_becoming_the_default(
    variable: str, value: str, tmp_path: Path
) -> None:
    result = dfm("run", "ghl-sync", env={**GHL_SYNC_ENV, variable: value}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"dfm: error: {variable} is malformed: "), result.stderr


def test_no_silent_fallback_for_every_entry_point() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(contact_source_of_truth="bogus", tag_match_mode="fuzzy", aloware_status_to_sequence="{x")
    assert [p.split(" ")[0] for p in raised.value.problems] == [
        "ALOWARE_STATUS_TO_SEQUENCE",
        "CONTACT_SOURCE_OF_TRUTH",
        "TAG_MATCH_MODE",
    ]
    assert str(raised.value).count("\n") == 0  # str() stays one line for one-line callers
    # what the original accepted still works; an empty value is unset
    settings = load_settings(
        aloware_status_to_sequence='{"hot": "seq-hot", "warm": {"sequence_id": null, "optional": true}}',
        tag_match_mode="regex",
    )
    assert settings.aloware_status_to_sequence["hot"] == "seq-hot" and settings.tag_match_mode == "regex"
    assert load_settings(aloware_status_to_sequence=" ").aloware_status_to_sequence == {}


def test_dfm_reads_dot_env_in_the_current_directory_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# an operator's .env\nCONTACT_SOURCE_OF_TRUTH=bogus\nGHL_API_KEY=from-dot-env\n")
    env = {k: v for k, v in GHL_SYNC_ENV.items() if k != "GHL_API_KEY"}
    read = dfm("config", "check", "ghl-sync", env=env, cwd=tmp_path)
    assert read.returncode == 2 and named(read.stdout.splitlines()) == ["CONTACT_SOURCE_OF_TRUTH"], read.stdout
    overridden = dfm("config", "check", "ghl-sync", env={**env, "CONTACT_SOURCE_OF_TRUTH": "ghl"}, cwd=tmp_path)
    assert overridden.returncode == 0, overridden.stdout  # GHL_API_KEY still comes from .env
    elsewhere = dfm("config", "check", "ghl-sync", env=env, cwd=tmp_path.parent)
    assert named(elsewhere.stdout.splitlines()) == ["GHL_API_KEY"]  # no .env there: only the environment


def test_a_services_own_start_checks_join_the_one_report(tmp_path: Path) -> None:
    from services.infra import nats_auth

    nats_auth.write_credentials(tmp_path / "creds")
    nats_auth.seed_path(tmp_path / "creds", "recorder").unlink()
    recorder = dfm(
        "config",
        "check",
        "recorder",
        cwd=tmp_path,
        env={**GHL_SYNC_ENV, "NATS_CREDENTIALS_DIR": str(tmp_path / "creds"), "TAG_MATCH_MODE": "fuzzy"},
    )
    assert recorder.returncode == 2
    assert named(recorder.stdout.splitlines()) == ["TAG_MATCH_MODE", "NATS_CREDENTIALS_DIR"], recorder.stdout
    console = dfm(
        "config",
        "check",
        "console",
        cwd=tmp_path,
        env={**GHL_SYNC_ENV, "NODE_ENV": "production", "CONSOLE_OPERATORS": "bob"},
    )
    assert named(console.stdout.splitlines()) == ["CONSOLE_SESSION_SECRET", "CONSOLE_OPERATORS"], console.stdout
    up = dfm("up", cwd=tmp_path, env={"DFM_UP_SERVICES": "ingress,ghl-synk", "DFM_DATA_DIR": str(tmp_path / "d")})
    assert up.returncode == 2 and not (tmp_path / "d").exists(), up.stdout + up.stderr  # before starting anything
    assert up.stderr.startswith("dfm: error: DFM_UP_SERVICES is malformed: ghl-synk is not a service"), up.stderr
    # the sandbox never connects to NATS: a credentials directory is no problem of its
    assert (
        dfm(
            "config",
            "check",
            "sandbox",
            cwd=tmp_path,
            env={"NATS_URL": "nats://127.0.0.1:1", "NATS_CREDENTIALS_DIR": str(tmp_path / "creds")},
        ).returncode
        == 0
    )
