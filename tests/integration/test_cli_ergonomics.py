"""A CLI that fits the field (issue #20): choices as enums with completion, ``dfm --version``,
commands grouped in help with examples, ``--output table|json``, ``events list`` newest first,
and destructive commands that ask first or take ``--yes``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import typer

from services.cli.main import app
from services.tooling.backup import DUMP
from tests.support.admin import insert_events
from tests.support.terminal import on_a_terminal

NOWHERE = {"DATABASE_URL": "postgresql://dfm@127.0.0.1:1/dfm", "NATS_URL": "nats://127.0.0.1:1"}
PANELS = {
    "Run": {"up", "run", "send"},
    "Operate": {"events", "replay", "sweep", "trace", "effects", "agents"},
    "Maintain": {"migrate", "backup", "restore", "purge", "nats", "config"},
}


def dfm(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "DFM_DATA_DIR": "/nonexistent", "COLUMNS": "160", **(env or {})},
        cwd=cwd,
        check=False,
    )


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("dfm: error:")]


def test_dfm_version_prints_the_package_version() -> None:
    result = dfm("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dfm {version('df-middleware')}"


def panels(help_text: str) -> dict[str, set[str]]:
    """Rich help panels: title -> the command names listed in it."""
    found: dict[str, set[str]] = {}
    current = None
    for line in help_text.splitlines():
        title = re.match(r"^╭─ (\w+) ─", line)
        if title:
            current = title.group(1)
            found[current] = set()
        elif current and (row := re.match(r"^│ ([a-z][a-z-]*) ", line)):
            found[current].add(row.group(1))
    return found


def test_help_groups_the_commands_as_run_operate_maintain_and_says_where_settings_come_from() -> None:
    result = dfm("--help")
    assert result.returncode == 0, result.stderr
    shown = panels(result.stdout)
    for title, commands in PANELS.items():
        assert commands <= shown[title], (title, shown)
    assert list(shown)[1:4] == ["Run", "Operate", "Maintain"], list(shown)  # after Options, in that order
    text = " ".join(result.stdout.split())
    assert ".env" in text and "--install-completion" in text and "--version" in text


def leaves(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under a group, with its path (``("events", "list")``)."""
    if hasattr(command, "commands"):
        return [leaf for name, sub in command.commands.items() for leaf in leaves(sub, (*path, name))]
    return [(path, command)]


def test_every_command_shows_an_example_of_itself() -> None:
    root = typer.main.get_command(app)
    found = leaves(root)
    assert len(found) > 20
    missing = []
    for path, command in found:
        lines = [line.strip() for line in (command.help or "").splitlines()]
        if not any(line.startswith(f"dfm {' '.join(path)}") for line in lines):  # an example of itself
            missing.append(" ".join(path))
    assert missing == [], f"no example `dfm <command> ...` line in the help of: {missing}"
    examples = sum("Examples:" in (command.help or "") for _, command in found)
    assert examples >= len(found) - 2  # all but backup/restore, whose examples stand alone


def test_choices_are_enums_refused_with_the_list_and_completed_by_the_shell() -> None:
    bad = dfm("run", "ghl-synk")
    assert bad.returncode == 2
    assert "ghl-sync" in bad.stderr and "aloware-sync" in bad.stderr  # the choices are shown
    bad_status = dfm("events", "list", "--status", "finished", env=NOWHERE)
    assert bad_status.returncode == 2 and "quarantined" in bad_status.stderr
    completed = dfm(env={"_DFM_COMPLETE": "complete_bash", "COMP_WORDS": "dfm run ghl", "COMP_CWORD": "2"})
    assert completed.returncode == 0, completed.stderr
    assert "ghl-sync" in completed.stdout and "ingress" not in completed.stdout
    statuses = dfm(
        env={"_DFM_COMPLETE": "complete_bash", "COMP_WORDS": "dfm events list --status d", "COMP_CWORD": "4"}
    )
    assert "done" in statuses.stdout and "dead" in statuses.stdout and "error" not in statuses.stdout


async def test_events_list_is_newest_first_and_every_listing_has_a_json_document(clean_db: str) -> None:
    oldest = await insert_events(clean_db, 1, start=0, spread_s=1)
    middle = await insert_events(clean_db, 1, start=60, spread_s=1, status="dead")
    newest = await insert_events(clean_db, 1, start=120, spread_s=1)
    env = {"DATABASE_URL": clean_db}
    listed = dfm("events", "list", "--output", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)["events"]] == [*newest, *middle, *oldest]
    ascending = json.loads(dfm("events", "list", "--order", "asc", "-o", "json", env=env).stdout)
    assert [e["id"] for e in ascending["events"]] == [*oldest, *middle, *newest]

    table = dfm("events", "list", env=env)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if re.match(r"^[0-9a-f]{8}-", line)]
    assert [row.split()[0] for row in rows] == [*newest, *middle, *oldest]  # full ids, even in a pipe
    assert table.stdout.splitlines()[0].split()[:2] == ["ID", "RECEIVED"]

    shown = json.loads(dfm("events", "show", middle[0], "-o", "json", env=env).stdout)
    assert shown["id"] == middle[0] and shown["status"] == "dead"
    assert middle[0] in dfm("events", "show", middle[0], env=env).stdout
    traced = json.loads(dfm("trace", middle[0], "-o", "json", env=env).stdout)
    assert traced["id"] == middle[0]
    purged = json.loads(dfm("purge", "--dry-run", "-o", "json", env=env).stdout)
    assert purged["dryRun"] is True and isinstance(purged["tables"], dict)
    assert json.loads(dfm("effects", "list", "-o", "json", env=env).stdout) == []
    marked = json.loads(dfm("events", "mark-done", middle[0], "-o", "json", env=env).stdout)
    assert marked == {"id": middle[0], "status": "done"}


def test_a_forced_bulk_replay_without_yes_and_no_terminal_is_refused() -> None:
    refused = dfm("replay", "--subject", "webhooks.aloware.>", "--force", env=NOWHERE)
    assert refused.returncode == 2 and len(errors(refused)) == 1, refused.stderr
    assert "--yes" in errors(refused)[0] and "no terminal" in errors(refused)[0]
    # --yes passes the question (then NATS is nowhere: exit 1); a dry run and named ids never ask
    for args in (
        ["replay", "--subject", "webhooks.aloware.>", "--force", "--yes"],
        ["replay", "--subject", "webhooks.aloware.>", "--force", "--dry-run"],
        ["events", "replay", str(uuid.uuid4()), "--force"],
        ["replay", "--subject", "webhooks.aloware.>"],
    ):
        passed = dfm(*args, env=NOWHERE)
        assert passed.returncode == 1 and "cannot reach NATS" in passed.stderr, (args, passed.stderr)


def test_a_forced_bulk_replay_on_a_terminal_asks_first() -> None:
    args = ("replay", "--subject", "webhooks.aloware.>", "--force")
    code, said = on_a_terminal(NOWHERE, *args, answer="n", timeout=60)
    assert code == 1 and "[y/N]" in said and "quarantined" in said and "cannot reach NATS" not in said, said
    code, said = on_a_terminal(NOWHERE, *args, answer="y", timeout=60)
    assert code == 1 and "cannot reach NATS" in said, said


def test_restore_without_yes_and_no_terminal_is_refused_the_same_way(tmp_path: Path) -> None:
    (tmp_path / DUMP).write_bytes(b"")  # enough to be taken for a backup directory
    refused = dfm("restore", str(tmp_path), env=NOWHERE)
    assert refused.returncode == 2 and len(errors(refused)) == 1, refused.stderr
    assert "--yes" in errors(refused)[0] and "no terminal" in errors(refused)[0]
