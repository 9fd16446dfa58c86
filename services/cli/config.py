"""What each ``dfm run`` service needs, checked all at once: ``dfm config check [SERVICE]`` and the
start of every ``dfm`` command that loads settings (issue #20).

One line per problem, starting with the variable (``NATS_URL is required: ...``,
``TAG_MATCH_MODE is malformed: ...``), and exit 2: an operator fixes the whole environment in
one round instead of one variable per restart. Besides what ``Settings`` checks itself
(``collect_settings``: malformed values, unknown choices, bad JSON, required variables,
production refusals), a service's own start-up checks run here too: the NATS credential of its
identity and the TLS files, the console's production refusals and ``CONSOLE_OPERATORS``,
``GATEWAY_TRUSTED_PROXIES``, ``DFM_UP_SERVICES``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from services.cli.output import Output, OutputOption, print_json
from services.infra.settings import ConfigError, Settings, collect_settings

__all__ = ["Service", "check", "config_app", "data_dir", "fail_with", "nats_identity", "settings_or_exit"]


class Service(StrEnum):
    """What ``dfm run`` runs (ARCHITECTURE.md §6)."""

    INGRESS = "ingress"
    RECORDER = "recorder"
    GHL_SYNC = "ghl-sync"
    ALOWARE_SYNC = "aloware-sync"
    VERITY_SYNC = "verity-sync"
    JOBS = "jobs"
    SCHEDULER = "scheduler"
    GATEWAY = "gateway"
    MCP = "mcp"
    SANDBOX = "sandbox"
    CONSOLE = "console"


def nats_identity(settings: Settings, service: str) -> str | None:
    """The NATS identity ``dfm run <service>`` connects as (``NATS_IDENTITY`` wins)."""
    from services.infra.nats_auth import service_identity

    return settings.nats_identity or service_identity(service, admin_api=bool(settings.df_admin_secret))


def _problems_of(check: Callable[[], object]) -> list[str]:
    try:
        check()
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _service_problems(settings: Settings, service: str) -> list[str]:
    """The checks a service makes at start beyond ``Settings``, made here first so they join the
    one report."""
    from services.infra.broker import credential_options, tls_context

    problems: list[str] = []
    identity = nats_identity(settings, service) if service in set(Service) else None
    if settings.nats_url and identity:  # None: a service that never connects (the sandbox)
        problems += _problems_of(lambda: credential_options(settings, identity))
    tls = settings.nats_tls_ca_file or settings.nats_tls_cert_file or settings.nats_tls_key_file
    if tls and service != Service.SANDBOX:
        problems += _problems_of(lambda: tls_context(settings))
    if service == Service.CONSOLE:
        from services.console.auth import Credentials

        problems += _problems_of(settings.refuse_insecure_console)
        problems += _problems_of(lambda: Credentials.from_settings(settings))
    if service == Service.GATEWAY:
        from services.gateway.limits import trusted_networks

        problems += _problems_of(lambda: trusted_networks(settings.gateway_trusted_proxies))
    if service == "up":
        unknown = sorted(set(settings.dfm_up_services) - {*Service, "none"})
        if unknown:
            problems.append(
                f"DFM_UP_SERVICES is malformed: {', '.join(unknown)} is not a service, expected some "
                f"of {', '.join(Service)} (or none)"
            )
    return problems


def check(service: str | None, env_file: str | None = None) -> tuple[Settings, list[str]]:
    """Settings for ``service`` (a ``dfm run`` service or a tool's kind such as ``events``; None:
    only the values) and every problem found, one line each."""
    settings, problems = collect_settings(env_file, service=service)
    if service is not None:  # a malformed value is at its default here: its own line is above
        problems += _service_problems(settings, service)
    return settings, problems


def fail_with(problems: list[str] | tuple[str, ...]) -> NoReturn:
    """Print each problem as one ``dfm: error:`` line on stderr and exit 2."""
    for problem in problems:
        typer.echo(f"dfm: error: {problem}", err=True)
    raise typer.Exit(2)


def settings_or_exit(service: str, env_file: str | None = None) -> Settings:
    """Settings ``service`` can start with, or every problem on stderr and exit 2."""
    settings, problems = check(service, env_file)
    if problems:
        fail_with(problems)
    return settings


def data_dir() -> Path:
    """``DFM_DATA_DIR`` (where ``dfm up`` writes stack.env), readable even from a broken
    environment: the problems are reported by the check that follows."""
    settings, _ = collect_settings()
    return Path(settings.dfm_data_dir)


config_app = typer.Typer(help="Check the configuration before a start.", no_args_is_help=True)


@config_app.command("check")
def config_check(
    service: Annotated[
        Service | None,
        typer.Argument(help="also check what this service requires (default: only the values)", show_default=False),
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List every missing or malformed variable in one run, one line each (exit 2), or say OK.

    Reads the environment and ./.env (the environment wins), as every dfm command does. With a
    SERVICE, also what it requires and its own start-up checks (NATS credential of its identity,
    TLS files, console refusals), exactly what `dfm run SERVICE` would stop on.

    Examples:

        dfm config check ingress

        dfm config check ghl-sync -o json | jq -r '.problems[].problem'

        sh -c 'set -a; . /etc/dfm/dfm.env; exec dfm config check jobs'
    """
    _, problems = check(service.value if service else None)
    if output is Output.JSON:
        print_json(
            {
                "ok": not problems,
                "service": service.value if service else None,
                "problems": [{"variable": _variable(p), "problem": p} for p in problems],
            }
        )
    elif problems:
        for problem in problems:
            typer.echo(problem)
    elif service is None:
        typer.echo("OK: every value is valid (give a service to check what it requires too)")
    else:
        typer.echo(f"OK: the configuration for {service.value} is complete and valid")
    raise typer.Exit(2 if problems else 0)


def _variable(problem: str) -> str | None:
    """The variable a problem line starts with (``GHL_WEBHOOK_VERIFY_MODE=log_only is ...``)."""
    head = problem.split(" ", 1)[0].split("=", 1)[0].rstrip(":")
    return head if head.replace("_", "").isalnum() and head.isupper() else None
