"""Progress of long operator work (``dfm backup``/``restore``, ``dfm replay``) on stderr: a
rich bar with the count, the rate and the time left on a terminal, else a line every N items
(a log file, journald, a CI log). stdout stays the command's result."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["ProgressBar", "ProgressLines", "ProgressReporter", "SilentProgress", "reporter"]

# the unit counted, and how its rate reads
UNITS = {"messages": "msg/s", "events": "events/s"}


class ProgressReporter(Protocol):
    """What a long operation reports to: ``start`` once (the items expected, when known),
    ``advance`` per item (its bytes, when they count), ``stop`` at the end, failed or not."""

    def start(self, total: int | None) -> None: ...

    def advance(self, nbytes: int = 0) -> None: ...

    def stop(self) -> None: ...


class SilentProgress:
    """No progress output (library calls and tests)."""

    def start(self, total: int | None) -> None:
        pass

    def advance(self, nbytes: int = 0) -> None:
        pass

    def stop(self) -> None:
        pass


class ProgressLines:
    """Without a terminal: one line every ``every`` items,
    ``dfm backup: 10000 of 25000 messages, 14.1 MB, 5210 msg/s, eta 3 s`` (no bytes for
    ``events``: ``dfm replay: 1000 of 5000 events, 812 events/s, eta 5 s``)."""

    def __init__(self, command: str, every: int, out: TextIO, unit: str = "messages") -> None:
        self.command, self.every, self.out, self.unit = command, max(every, 1), out, unit
        self.total: int | None = None
        self.done = self.bytes = 0
        self.started = time.monotonic()

    def start(self, total: int | None) -> None:
        self.total, self.started = total, time.monotonic()

    def advance(self, nbytes: int = 0) -> None:
        self.done += 1
        self.bytes += nbytes
        if self.done % self.every == 0:
            self.out.write(self.line() + "\n")
            self.out.flush()

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        of = f" of {self.total}" if self.total is not None else ""
        eta = f", eta {max(self.total - self.done, 0) / rate:.0f} s" if self.total is not None and rate else ""
        size = f", {self.bytes / 1e6:.1f} MB" if self.unit == "messages" else ""
        per = UNITS.get(self.unit, f"{self.unit}/s")
        return f"dfm {self.command}: {self.done}{of} {self.unit}{size}, {rate:.0f} {per}{eta}"

    def stop(self) -> None:
        pass


class _RateColumn(ProgressColumn):
    def __init__(self, per: str) -> None:
        super().__init__()
        self.per = per

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.per}" if speed is not None else f"? {self.per}", style="progress.data.speed")


class _BytesColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(filesize.decimal(int(task.fields.get("bytes", 0))), style="progress.filesize")


class ProgressBar:
    """On a terminal: a bar with the count, the rate, the bytes (of messages) and the time left."""

    def __init__(self, description: str, console: Console, unit: str = "messages") -> None:
        columns: list[ProgressColumn] = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(UNITS.get(unit, f"{unit}/s")),
        ]
        if unit == "messages":
            columns.append(_BytesColumn())
        columns += [TextColumn("eta"), TimeRemainingColumn()]
        self.progress = Progress(*columns, console=console)
        self.task = self.progress.add_task(description, start=False, total=None, bytes=0)
        self.bytes = 0

    def start(self, total: int | None) -> None:
        self.progress.update(self.task, total=total)
        self.progress.start_task(self.task)
        self.progress.start()

    def advance(self, nbytes: int = 0) -> None:
        self.bytes += nbytes
        self.progress.update(self.task, advance=1, bytes=self.bytes)

    def stop(self) -> None:
        task = self.progress.tasks[0]
        if task.total is None or task.completed > task.total:
            self.progress.update(self.task, total=task.completed)  # the bar ends full
        self.progress.stop()


def reporter(
    command: str, every: int, out: TextIO | None = None, *, unit: str = "messages", what: str = "WEBHOOKS"
) -> ProgressReporter:
    """A bar when ``out`` (stderr by default) is a terminal, else a line every ``every`` items."""
    out = out if out is not None else sys.stderr
    if out.isatty():
        return ProgressBar(f"{command} {what}", Console(file=out), unit)
    return ProgressLines(command, every, out, unit)
