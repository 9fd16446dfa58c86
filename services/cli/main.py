"""``dfm``: the one command-line entry point (ARCHITECTURE.md §6)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from services.cli import ops as cli_ops
from services.infra.settings import ConfigError, Settings, load_settings

app = typer.Typer(
    help="DF-Middleware: keeps GoHighLevel, Aloware, texting and Verity in sync.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")
app.add_typer(cli_ops.events_app, name="events")
app.add_typer(cli_ops.agents_app, name="agents")
app.add_typer(cli_ops.effects_app, name="effects")
app.command("replay")(cli_ops.replay)
app.command("sweep")(cli_ops.sweep)
app.command("trace")(cli_ops.trace)
app.command("backup")(cli_ops.backup)
app.command("restore")(cli_ops.restore)
app.command("purge")(cli_ops.purge)
app.add_typer(cli_ops.nats_app, name="nats")
console_app = typer.Typer(help="The operator console (`dfm run console`).", no_args_is_help=True)
app.add_typer(console_app, name="console")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit."""
    typer.echo(f"dfm: error: {message}", err=True)
    raise typer.Exit(code)


SERVICES = ("ingress", "recorder", "ghl-sync", "aloware-sync", "verity-sync", "jobs", "scheduler",
            "gateway", "mcp", "sandbox", "console")
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
    """Load settings and check what ``service`` needs; one clear line and exit 2 if not."""
    try:
        settings = load_settings(env_file=env_file)
        settings.require_for(service)
    except ConfigError as exc:
        fail(str(exc))
    return settings


@app.command()
def up() -> None:
    """Run the whole stack: embedded NATS/PostgreSQL when unconfigured, then every service."""
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
    except Exception as exc:  # any start-up failure is reported in one line
        fail(f"could not start the stack: {exc}", code=1)
    try:
        wanted = [s for s in settings.dfm_up_services if s != "none"]
        unknown = sorted(set(wanted) - set(SERVICES))
        if unknown:
            fail(f"DFM_UP_SERVICES names unknown services: {', '.join(unknown)}")
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


@app.command()
def run(
    service: Annotated[str, typer.Argument(help=f"one of: {', '.join(SERVICES)}")],
) -> None:
    """Run one service in the foreground (configuration from the environment)."""
    from services.infra.logging import configure_logging

    if service not in SERVICES:
        fail(f"unknown service {service!r}: expected one of {', '.join(SERVICES)}")
    stack_env = Path(load_settings().dfm_data_dir) / "stack.env"
    # an agent starting `dfm run mcp` next to `dfm up` gets the dev stack's settings
    env_file = str(stack_env) if service == "mcp" and stack_env.exists() else None
    settings = settings_for(service, env_file=env_file)
    from services.infra.nats_auth import service_identity

    identity = settings.nats_identity or service_identity(service, admin_api=bool(settings.df_admin_secret))
    if identity:  # the process is this service on NATS: it checks the topology, never changes it
        os.environ["NATS_IDENTITY"] = identity  # for worker processes that load settings again
        settings = settings.model_copy(update={"nats_identity": identity})
        if settings.nats_url:  # a missing seed is one line now, not a connect loop failing later
            from services.infra.broker import credential_options

            try:
                credential_options(settings, identity)
            except ConfigError as exc:
                fail(str(exc))
    configure_logging(service, settings.log_level, settings.log_format)
    from services.infra import tracing

    tracing.configure(service, settings.otel_traces_exporter)
    import importlib

    importlib.import_module(RUNNERS[service]).run(settings)


@app.command()
def send(
    fixture: Annotated[Path, typer.Argument(help="a JSON body, e.g. tests/fixtures/webhooks/ghl/ContactCreate.json")],
    source: Annotated[str, typer.Option(help="ghl, ghl_provider, aloware, texting or broadcast")],
    url: Annotated[str | None, typer.Option(help="ingress base URL (default: local ingress)")] = None,
    fresh: Annotated[bool, typer.Option(help="new webhookId/timestamp/messageId so it is not a duplicate")] = False,
) -> None:
    """Post a fixture to the ingress, signed with the configured secrets."""
    import httpx

    from services.tooling.sender import build_request, post

    data_dir = Path(load_settings().dfm_data_dir)
    stack_env = data_dir / "stack.env"
    settings = settings_for("send", env_file=str(stack_env) if stack_env.exists() else None)
    try:
        body, request = build_request(settings, fixture.read_bytes(), source, fresh=fresh)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    base = url or f"http://127.0.0.1:{settings.ingress_port}"
    try:
        status, answer = post(base, request, body)
    except httpx.HTTPError as exc:
        fail(f"could not reach the ingress at {base}: {type(exc).__name__} (is `dfm up` running?)", code=1)
    typer.echo(f"{status} {answer}")
    raise typer.Exit(0 if status < 400 else 1)


@migrate_app.command("upgrade")
def migrate_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    topology: Annotated[bool, typer.Option(help="also the NATS topology step when NATS_URL is set")] = True,
) -> None:
    """Apply migrations up to REVISION (default: head), then create or update the NATS streams
    and durables (admin identity; never lowering replicas or retention)."""
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
    """Revert migrations down to REVISION."""
    from services.infra.db import migrate

    settings = settings_for("migrate")
    migrate.downgrade(settings.database_url_str, revision)
    typer.echo(f"at {migrate.current(settings.database_url_str) or 'base'}")


@migrate_app.command("current")
def migrate_current() -> None:
    """Print the database's current revision."""
    from services.infra.db import migrate

    settings = settings_for("migrate")
    typer.echo(migrate.current(settings.database_url_str) or "base")


@console_app.command("hash-password")
def console_hash_password(
    name: Annotated[str | None, typer.Option(help="print name:hash, a CONSOLE_OPERATORS entry")] = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="read the password from the first line of stdin")] = False,
) -> None:
    """Hash an operator's password for CONSOLE_OPERATORS (scrypt with a random salt). The
    password is asked twice without echo, or read from stdin; it is never printed."""
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigError as exc:  # raised outside settings_for (e.g. lazily by a library call)
        typer.echo(f"dfm: error: {exc}", err=True)
        sys.exit(2)

