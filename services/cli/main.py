"""``dfm``: the one command-line entry point (ARCHITECTURE.md §6).

Commands are grouped in ``--help`` as Run (processes), Operate (incidents: events, replays,
traces) and Maintain (schema, backups, NATS, configuration); choices are enums the shell
completes (``dfm --install-completion``); data comes as ``--output table|json``.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from contracts.lanes import LANES
from contracts.subjects import Source
from services.cli import ops as cli_ops
from services.cli.config import Service, config_app, data_dir, nats_identity, settings_or_exit
from services.cli.output import Output, OutputOption, print_json
from services.infra.settings import ConfigError, Settings, load_settings

RUN, OPERATE, MAINTAIN = "Run", "Operate", "Maintain"

app = typer.Typer(
    help="DF-Middleware: keeps GoHighLevel, Aloware, texting and Verity in sync.\n\n"
    "Settings come from the environment and, when present, ./.env (the environment wins); "
    "`dfm config check [SERVICE]` lists every missing or malformed one. Next to a running "
    "`dfm up`, the operator commands also read its .dfm/stack.env.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
console_app = typer.Typer(help="The operator console (`dfm run console`).", no_args_is_help=True)


def _version(show: bool) -> None:
    if show:
        try:
            typer.echo(f"dfm {version('df-middleware')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("dfm (not installed: no version)")
        raise typer.Exit


@app.callback()
def root(
    show_version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """DF-Middleware: keeps GoHighLevel, Aloware, texting and Verity in sync."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit."""
    typer.echo(f"dfm: error: {message}", err=True)
    raise typer.Exit(code)


SERVICES = tuple(s.value for s in Service)
RUNNERS = {
    "ingress": "services.ingress.main",
    "recorder": "services.recorder.main",
    "ghl-sync": "services.ghl_sync.main",
    "aloware-sync": "services.aloware_sync.main",
    "verity-sync": "services.verity_sync.main",
    "jobs": "services.jobs.main",
    "scheduler": "services.scheduler.main",
    "gateway": "services.gateway.main",
    "mcp": "services.mcp.main",
    "sandbox": "services.sandbox.main",
    "console": "services.console.main",
}


def settings_for(service: str, env_file: str | None = None) -> Settings:
    """Settings ``service`` can start with; else every problem, one ``dfm: error:`` line each,
    and exit 2 (services/cli/config.py)."""
    return settings_or_exit(service, env_file)


@app.command(rich_help_panel=RUN)
def up() -> None:
    """Run the whole stack: embedded NATS/PostgreSQL when unconfigured, then every service.

    NATS and PostgreSQL are embedded when NATS_URL/DATABASE_URL are unset, vendors are the
    sandbox when their credentials are unset; DFM_UP_SERVICES says which services start. The
    connection settings are written to .dfm/stack.env for the other commands. Ctrl-C stops all.

    Examples:

        dfm up

        DFM_UP_SERVICES=ingress,recorder,ghl-sync dfm up
    """
    from services.tooling.devstack import (
        start_infrastructure,
        start_services,
        wait_until_interrupted,
    )

    settings = settings_for("up")
    # progress lines must reach a log file or a process manager as they happen
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    data_dir = Path(settings.dfm_data_dir).resolve()
    typer.echo(f"dfm up: data in {data_dir}")
    try:
        stack = start_infrastructure(settings, data_dir, typer.echo)
    except Exception as exc:  # any start-up failure is reported in one line  # noqa: BLE001
        fail(f"could not start the stack: {exc}", code=1)
    try:
        wanted = [s for s in settings.dfm_up_services if s != "none"]  # names checked by settings_for
        effective = load_settings(**{k.lower(): v for k, v in stack.env.items()})
        try:
            start_services(stack, wanted, effective, typer.echo)
        except RuntimeError as exc:
            fail(f"could not start the stack: {exc}", code=1)
        typer.echo("ready: press Ctrl-C to stop")
        code = wait_until_interrupted(stack, typer.echo)
    finally:
        typer.echo("stopping...")
        stack.stop()
        typer.echo("stopped")
    raise typer.Exit(code)


class LaneChoice(StrEnum):
    """Which of ghl-sync's lanes a process serves (issue #18)."""

    ALL = "all"
    REALTIME = "realtime"
    BULK = "bulk"


@app.command(rich_help_panel=RUN)
def run(
    service: Annotated[Service, typer.Argument(help="the service to run", show_default=False)],
    lane: Annotated[
        LaneChoice,
        typer.Option(
            help="ghl-sync only: serve its real-time durable (ghl-sync), its bulk one (ghl-sync-bulk, "
            "DFM_BULK_SUBJECTS) or both",
        ),
    ] = LaneChoice.ALL,
) -> None:
    """Run one service in the foreground (configuration from the environment and ./.env).

    Every missing or malformed setting is listed before it starts, one line each, exit 2 (the
    report of `dfm config check SERVICE`). Logs go to stderr (LOG_FORMAT), SIGTERM drains.
    ghl-sync serves both its lanes unless --lane names one (to scale a lane alone).

    Examples:

        dfm run ingress

        NATS_URL=nats://nats-1:4222,nats://nats-2:4222 dfm run ghl-sync

        dfm run ghl-sync --lane bulk
    """
    if lane is not LaneChoice.ALL and service is not Service.GHL_SYNC:
        fail(f"--lane is an option of ghl-sync only, not of {service.value}")
    from services.infra.logging import configure_logging

    name = service.value
    stack_env = data_dir() / "stack.env"
    # an agent starting `dfm run mcp` next to `dfm up` gets the dev stack's settings
    env_file = str(stack_env) if service is Service.MCP and stack_env.exists() else None
    settings = settings_for(name, env_file=env_file)
    identity = nats_identity(settings, name)  # its credential was checked with the settings
    if identity:  # the process is this service on NATS: it checks the topology, never changes it
        os.environ["NATS_IDENTITY"] = identity  # for worker processes that load settings again
        settings = settings.model_copy(update={"nats_identity": identity})
    configure_logging(name, settings.log_level, settings.log_format)
    from services.infra import tracing

    tracing.configure(name, settings.otel_traces_exporter)
    import importlib

    module = importlib.import_module(RUNNERS[name])
    if name == "jobs":  # the composition root: jobs may not import the sync services' planners
        from services.cli.explain import explainer

        module.run(settings, explainer)
    elif service is Service.GHL_SYNC:
        module.run(settings, tuple(x for x in LANES if lane is LaneChoice.ALL or x == lane.value))
    else:
        module.run(settings)


@app.command(rich_help_panel=RUN)
def send(
    fixture: Annotated[Path, typer.Argument(help="a JSON body, e.g. tests/fixtures/webhooks/ghl/ContactCreate.json")],
    source: Annotated[Source, typer.Option(help="the endpoint family it is posted to", show_default=False)],
    url: Annotated[str | None, typer.Option(help="ingress base URL (default: local ingress)")] = None,
    fresh: Annotated[bool, typer.Option(help="new webhookId/timestamp/messageId so it is not a duplicate")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Post a fixture to the ingress, signed with the configured secrets.

    Prints the HTTP status and the ingress's answer; exit 1 for a 4xx/5xx.

    Examples:

        dfm send tests/fixtures/webhooks/aloware/contact-created.json --source aloware

        dfm send my-event.json --source ghl --fresh --url http://127.0.0.1:3002 -o json
    """
    import json

    import httpx

    from services.tooling.sender import build_request, post

    stack_env = data_dir() / "stack.env"
    settings = settings_for("send", env_file=str(stack_env) if stack_env.exists() else None)
    try:
        body, request = build_request(settings, fixture.read_bytes(), source.value, fresh=fresh)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    base = url or f"http://127.0.0.1:{settings.ingress_port}"
    try:
        status, answer = post(base, request, body)
    except httpx.HTTPError as exc:
        fail(f"could not reach the ingress at {base}: {type(exc).__name__} (is `dfm up` running?)", code=1)
    if output is Output.JSON:
        try:
            parsed = json.loads(answer)
        except ValueError:
            parsed = answer
        print_json({"status": status, "answer": parsed})
    else:
        typer.echo(f"{status} {answer}")
    raise typer.Exit(0 if status < 400 else 1)


@migrate_app.command("upgrade")
def migrate_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    topology: Annotated[bool, typer.Option(help="also the NATS topology step when NATS_URL is set")] = True,
) -> None:
    """Apply migrations up to REVISION (default: head), then create or update the NATS streams
    and durables (admin identity; never lowering replicas or retention).

    Examples:

        dfm migrate upgrade

        dfm migrate upgrade 0007 --no-topology
    """
    from services.infra.db import migrate

    settings = settings_for("migrate")
    migrate.upgrade(settings.database_url_str, revision)
    typer.echo(f"at {migrate.current(settings.database_url_str) or 'base'}")
    if topology and settings.nats_url:
        cli_ops.run_topology(settings)
        typer.echo("streams WEBHOOKS and JOBS and their durables ready")


@migrate_app.command("downgrade")
def migrate_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, or 'base' for none")],
) -> None:
    """Revert migrations down to REVISION (every revision has a working downgrade).

    Examples:

        dfm migrate downgrade 0007

        dfm migrate downgrade base
    """
    from services.infra.db import migrate

    settings = settings_for("migrate")
    migrate.downgrade(settings.database_url_str, revision)
    typer.echo(f"at {migrate.current(settings.database_url_str) or 'base'}")


@migrate_app.command("current")
def migrate_current(output: OutputOption = Output.TABLE) -> None:
    """Print the database's current revision ("base": none applied).

    Examples:

        dfm migrate current

        dfm migrate current -o json
    """
    from services.infra.db import migrate

    settings = settings_for("migrate")
    revision = migrate.current(settings.database_url_str) or "base"
    if output is Output.JSON:
        print_json({"revision": revision})
    else:
        typer.echo(revision)


@console_app.command("hash-password")
def console_hash_password(
    name: Annotated[str | None, typer.Option(help="print name:hash, a CONSOLE_OPERATORS entry")] = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="read the password from the first line of stdin")] = False,
) -> None:
    """Hash an operator's password for CONSOLE_OPERATORS (scrypt with a random salt). The
    password is asked twice without echo, or read from stdin; it is never printed.

    Examples:

        dfm console hash-password --name alice

        printf '%s\\n' "$PASSWORD" | dfm console hash-password --name alice --stdin
    """
    from services.console.auth import OPERATOR_NAME, hash_password

    if name is not None and not OPERATOR_NAME.match(name):
        fail("--name must be 1-64 letters, digits or ._@-")
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < 12:
        fail("the password must have at least 12 characters")
    encoded = hash_password(password)
    typer.echo(f"{name}:{encoded}" if name else encoded)


# --- the command tree, in the order --help shows it ------------------------------------------
# Run: up, run, send (above). Operate: what an incident needs. Maintain: schema, backups, NATS,
# configuration, the console's operators.
app.add_typer(cli_ops.events_app, name="events", rich_help_panel=OPERATE)
app.command("replay", rich_help_panel=OPERATE)(cli_ops.replay)
app.command("sweep", rich_help_panel=OPERATE)(cli_ops.sweep)
app.command("trace", rich_help_panel=OPERATE)(cli_ops.trace)
app.command("lanes", rich_help_panel=OPERATE)(cli_ops.lanes)
app.add_typer(cli_ops.effects_app, name="effects", rich_help_panel=OPERATE)
app.add_typer(cli_ops.agents_app, name="agents", rich_help_panel=OPERATE)
app.add_typer(migrate_app, name="migrate", rich_help_panel=MAINTAIN)
app.command("backup", rich_help_panel=MAINTAIN)(cli_ops.backup)
app.command("restore", rich_help_panel=MAINTAIN)(cli_ops.restore)
app.command("purge", rich_help_panel=MAINTAIN)(cli_ops.purge)
app.add_typer(cli_ops.nats_app, name="nats", rich_help_panel=MAINTAIN)
app.add_typer(config_app, name="config", rich_help_panel=MAINTAIN)
app.add_typer(console_app, name="console", rich_help_panel=MAINTAIN)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="dfm")  # `python -m services.cli` too: help, errors and completion say dfm
    except ConfigError as exc:  # raised outside settings_for (e.g. lazily by a library call)
        for problem in exc.problems:
            typer.echo(f"dfm: error: {problem}", err=True)
        sys.exit(2)
