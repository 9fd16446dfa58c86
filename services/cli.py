"""``dfm``: the one command-line entry point (ARCHITECTURE.md §6)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from services.common.settings import ConfigError, Settings, load_settings

app = typer.Typer(
    help="DF-Middleware: keeps GoHighLevel, Aloware, texting and Verity in sync.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit."""
    typer.echo(f"dfm: error: {message}", err=True)
    raise typer.Exit(code)


def settings_for(service: str) -> Settings:
    """Load settings and check what ``service`` needs; one clear line and exit 2 if not."""
    try:
        settings = load_settings()
        settings.require_for(service)
    except ConfigError as exc:
        fail(str(exc))
    return settings


@app.command()
def up() -> None:
    """Run the whole stack: embedded NATS/PostgreSQL when unconfigured, then every service."""
    from services.common.devstack import start_infrastructure, wait_until_interrupted

    settings = settings_for("up")
    data_dir = Path(settings.dfm_data_dir).resolve()
    typer.echo(f"dfm up: data in {data_dir}")
    try:
        stack = start_infrastructure(settings, data_dir, typer.echo)
    except Exception as exc:  # any start-up failure is reported in one line
        fail(f"could not start the stack: {exc}", code=1)
    try:
        typer.echo("ready: press Ctrl-C to stop")
        code = wait_until_interrupted(stack, typer.echo)
    finally:
        typer.echo("stopping...")
        stack.stop()
        typer.echo("stopped")
    raise typer.Exit(code)


@migrate_app.command("upgrade")
def migrate_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from services.common.db import migrate

    settings = settings_for("migrate")
    migrate.upgrade(settings.database_url_str, revision)
    typer.echo(f"at {migrate.current(settings.database_url_str) or 'base'}")


@migrate_app.command("downgrade")
def migrate_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, or 'base' for none")],
) -> None:
    """Revert migrations down to REVISION."""
    from services.common.db import migrate

    settings = settings_for("migrate")
    migrate.downgrade(settings.database_url_str, revision)
    typer.echo(f"at {migrate.current(settings.database_url_str) or 'base'}")


@migrate_app.command("current")
def migrate_current() -> None:
    """Print the database's current revision."""
    from services.common.db import migrate

    settings = settings_for("migrate")
    typer.echo(migrate.current(settings.database_url_str) or "base")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigError as exc:  # raised outside settings_for (e.g. lazily by a library call)
        typer.echo(f"dfm: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
