"""``--output table|json`` for every ``dfm`` command that prints data (issue #20).

``table`` is for people: aligned columns without borders, like ``kubectl get``, so a line still
greps and cuts; in a pipe nothing is cut to a terminal's width. ``json`` is one document on
stdout, for scripts (``jq``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer

__all__ = ["JsonFlag", "Output", "OutputOption", "chosen", "print_fields", "print_json", "print_table"]


class Output(StrEnum):
    """What a command prints."""

    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[
    Output,
    typer.Option("--output", "-o", case_sensitive=False, help="table (for people) or json (one document, for scripts)"),
]
# the flag before --output existed, kept so scripts written against it work
JsonFlag = Annotated[bool, typer.Option("--json", hidden=True, help="the same as --output json")]


def chosen(output: Output, as_json: bool = False) -> Output:
    """``--output``, with the old ``--json`` flag meaning ``--output json``."""
    return Output.JSON if as_json else output


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


def _console() -> Any:
    from rich.console import Console

    terminal = sys.stdout.isatty()
    # in a pipe: the table's own width, never cut or wrapped at 80 columns
    return Console(
        width=None if terminal else 100_000, soft_wrap=not terminal, highlight=False, emoji=False, markup=False
    )


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows under upper-case column names, aligned, no borders."""
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD if sys.stdout.isatty() else None, show_edge=False, pad_edge=False, header_style="bold"
    )
    for column in columns:
        table.add_column(column.upper(), no_wrap=column.lower() == "id", overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    _print(table)


def print_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """One ``name  value`` line per field."""
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(name, "" if value is None else str(value))
    _print(table)


def _print(renderable: Any) -> None:
    console = _console()
    if sys.stdout.isatty():
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    for line in captured.get().splitlines():  # no trailing padding in a file or a pipe
        typer.echo(line.rstrip())
