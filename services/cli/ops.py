"""Operator commands of ``dfm``: ``events``, ``replay``, ``sweep``, ``trace``, ``purge``,
``agents``, ``backup``/``restore``, ``effects`` and ``nats``.

They talk to PostgreSQL and NATS directly (``DATABASE_URL``, ``NATS_URL``; next to a running
``dfm up`` they read ``.dfm/stack.env``), applying the same transitions as the admin API. What
they print is ``--output table`` (for people) or ``--output json`` (one document); choices are
enums the shell completes; what cannot be undone asks first or takes ``--yes``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from contracts.subjects import Source
from services.cli.config import data_dir, settings_or_exit
from services.cli.output import JsonFlag, Output, OutputOption, chosen, print_fields, print_json, print_table
from services.infra.settings import ConfigError, Settings

T = TypeVar("T")
events_app = typer.Typer(help="Inspect and act on recorded events.", no_args_is_help=True)


class EventTable(StrEnum):
    """The event tables (services/infra/db/models/events.py ``TableName``)."""

    WEBHOOK = "webhook"
    TEXTING = "texting"
    BROADCAST = "broadcast"


class EventStatus(StrEnum):
    """An event's status (``EVENT_STATUSES``, ARCHITECTURE.md §3 invariant 3)."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    ERROR = "error"
    DEAD = "dead"
    QUARANTINED = "quarantined"


class Order(StrEnum):
    """Listing order by receipt time."""

    DESC = "desc"
    ASC = "asc"


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"dfm: error: {message}", err=True)
    raise typer.Exit(code)


def confirm_or_exit(question: str, *, yes: bool, refusal: str, command: str) -> None:
    """Ask ``question`` on the terminal unless ``--yes``. Without a terminal (a script, a pipe,
    cron) nobody can answer: exit 2 saying so, never a default answer. "No" exits 1."""
    if yes:
        return
    if not sys.stdin.isatty():
        _fail(f"{refusal}; no terminal to confirm on: pass --yes", code=2)
    if not typer.confirm(question, default=False, err=True):
        _fail(f"{command} not confirmed: nothing changed", code=1)


def tool_settings(kind: str) -> Settings:
    """Settings for an operator tool: the environment and ./.env, over ``.dfm/stack.env`` when
    present; every problem on stderr and exit 2 otherwise."""
    stack_env = data_dir() / "stack.env"
    settings = settings_or_exit(kind, env_file=str(stack_env) if stack_env.exists() else None)
    from services.infra.logging import configure_logging

    configure_logging(f"dfm-{kind}", "warning", "console")  # stdout stays the command's output
    return settings


def _run(coro: Awaitable[T]) -> T:
    from services.tooling.operations import OperationError

    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except OperationError as exc:
        _fail(exc.message, code=1)


@asynccontextmanager
async def _engine(settings: Settings) -> Any:
    from services.infra.db.session import create_engine

    engine = create_engine(settings, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def _jobs(settings: Settings, explain: bool = False) -> Any:
    """A Jobs runner in this process (database + NATS)."""
    from services.infra.broker import connect
    from services.jobs.service import Jobs

    async with _engine(settings) as engine:
        try:
            nc = await connect(settings, name="dfm-cli", max_reconnect_attempts=2)
        except Exception as exc:  # any connection failure is one line for the operator  # noqa: BLE001
            from services.infra.broker import redact_url

            _fail(f"cannot reach NATS at {','.join(map(redact_url, settings.nats_url))}: {type(exc).__name__}", code=1)
        jobs = Jobs(settings, engine, nc)
        if explain:
            jobs.replayer.explain = _explainer(settings, engine)
        try:
            yield jobs
        finally:
            await jobs.close()
            await nc.drain()


def _explainer(settings: Settings, engine: Any) -> Callable[[Any], Awaitable[list[str]]]:
    from services.cli.explain import explainer

    return explainer(settings, engine)


def _parse_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        _fail(f"not an event id: {value!r}")


def _print_json(data: Any) -> None:
    print_json(data)


# --- dfm events ------------------------------------------------------------------------------
@events_app.command("list")
def events_list(
    table: Annotated[EventTable, typer.Option(help="which events")] = EventTable.WEBHOOK,
    status: Annotated[EventStatus | None, typer.Option(help="only this status", show_default=False)] = None,
    source: Annotated[Source | None, typer.Option(help="only this source (webhook table)", show_default=False)] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="event type as sent")] = None,
    entity_id: Annotated[str | None, typer.Option(help="entity id")] = None,
    since: Annotated[datetime | None, typer.Option(help="received at or after (ISO time)")] = None,
    until: Annotated[datetime | None, typer.Option(help="received before (ISO time)")] = None,
    order: Annotated[Order, typer.Option(help="newest first (desc) or oldest first (asc)")] = Order.DESC,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option(help="nextCursor of the previous page")] = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List events, newest first (one page; the next page's cursor is printed last).

    Payloads are redacted; `dfm events show ID` has one event in full, `dfm trace ID` its life.

    Examples:

        dfm events list --status dead

        dfm events list --source aloware --since 2025-01-01T09:00 --order asc

        dfm events list --status error -o json | jq -r '.events[].id'
    """
    from services.tooling.operations import EventFilter, list_events

    settings = tool_settings("events")
    f = EventFilter(
        table=table.value,
        status=status.value if status else None,
        source=source.value if source else None,
        event_type=event_type,
        entity_id=entity_id,
        received_from=since,
        received_to=until,
        order=order.value,
        limit=limit,
        cursor=cursor,
    )

    async def go() -> tuple[list[dict[str, Any]], str | None]:
        async with _engine(settings) as engine:
            return await list_events(engine, f)

    events, next_cursor = _run(go())
    if chosen(output, as_json) is Output.JSON:
        print_json({"events": events, "count": len(events), "nextCursor": next_cursor})
        return
    print_table(
        ["id", "received", "source", "type", "status", "outcome", "attempts", "error"],
        [
            (
                e["id"],
                e["receivedAt"][:23],
                e["source"],
                e["eventType"],
                e["status"],
                e["outcome"],
                e["attempts"],
                e["errorMessage"] or e["outcomeReason"],
            )
            for e in events
        ],
    )
    typer.echo(f"{len(events)} events" + (f"; next page: --cursor {next_cursor}" if next_cursor else ""))


@events_app.command("show")
def events_show(event_id: str, output: OutputOption = Output.TABLE) -> None:
    """One event with its deliveries per consumer (-o json: also attempts, sync_log rows and
    the redacted payload).

    Examples:

        dfm events show 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11

        dfm events show 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11 -o json | jq .deliveries
    """
    from services.tooling.operations import show_event

    settings = tool_settings("events")

    async def go() -> dict[str, Any]:
        async with _engine(settings) as engine:
            return await show_event(engine, _parse_id(event_id))

    d = _run(go())
    if output is Output.JSON:
        print_json(d)
        return
    print_fields(
        [
            ("id", d["id"]),
            ("table", d["table"]),
            ("received", d["receivedAt"]),
            ("source", d["source"]),
            ("type", d["eventType"]),
            ("entity", f"{d['entityType']}:{d['entityId']}"),
            ("status", d["status"]),
            ("outcome", d["outcome"]),
            ("reason", d["errorMessage"] or d["outcomeReason"]),
            ("attempts", d["attempts"]),
            ("stream seq", d["streamSeq"]),
            ("next attempt", d["nextAttemptAt"]),
            ("processed", d["processedAt"]),
        ]
    )
    if d.get("deliveries"):
        typer.echo("")
        print_table(
            ["consumer", "status", "outcome", "attempts", "last error"],
            [(x["consumer"], x["status"], x["outcome"], x["attempts"], x["lastError"]) for x in d["deliveries"]],
        )


@events_app.command("mark-done")
def events_mark_done(event_id: str, output: OutputOption = Output.TABLE) -> None:
    """pending/error/dead → done (outcome skipped, marked_done_by_operator).

    Examples:

        dfm events mark-done 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11
    """
    from services.tooling.operations import mark_done

    settings = tool_settings("events")

    async def go() -> None:
        async with _engine(settings) as engine:
            await mark_done(engine, _parse_id(event_id), by="cli")

    _run(go())
    if output is Output.JSON:
        print_json({"id": event_id, "status": "done"})
    else:
        typer.echo(f"{event_id}: marked done")


@events_app.command("quarantine")
def events_quarantine(
    event_id: str,
    reason: Annotated[str, typer.Option(help="why")] = "Manual quarantine",
    by: Annotated[str | None, typer.Option(help="who")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Quarantine an event: never processed until replayed with --force.

    Examples:

        dfm events quarantine 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11 --reason "poison: bad phone" --by ana
    """
    from services.tooling.operations import quarantine

    settings = tool_settings("events")

    async def go() -> None:
        async with _engine(settings) as engine:
            await quarantine(engine, _parse_id(event_id), reason=reason, by=by or "cli")

    _run(go())
    if output is Output.JSON:
        print_json({"id": event_id, "status": "quarantined"})
    else:
        typer.echo(f"{event_id}: quarantined")


@events_app.command("replay")
def events_replay(
    event_ids: Annotated[list[str], typer.Argument(help="one or more event ids")],
    force: Annotated[bool, typer.Option(help="also release quarantined events")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be re-delivered")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Replay events by id (same as ``dfm replay --event-id``). Naming each event is the
    confirmation: --force here does not ask.

    Examples:

        dfm events replay 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11 --dry-run

        dfm events replay 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11 --force
    """
    _replay(event_ids=[_parse_id(i) for i in event_ids], force=force, dry_run=dry_run, output=output)


# --- dfm replay / sweep / trace --------------------------------------------------------------
def replay(
    subject: Annotated[str | None, typer.Option(help="subject filter, e.g. 'webhooks.aloware.contact.>'")] = None,
    since: Annotated[datetime | None, typer.Option(help="stream time from (ISO time)")] = None,
    until: Annotated[datetime | None, typer.Option(help="stream time to (ISO time)")] = None,
    from_seq: Annotated[int | None, typer.Option(min=1, help="first stream sequence")] = None,
    to_seq: Annotated[int | None, typer.Option(min=1, help="last stream sequence")] = None,
    event_id: Annotated[list[str] | None, typer.Option(help="replay these events (repeatable)")] = None,
    force: Annotated[bool, typer.Option(help="also release quarantined events (asks first over a --subject)")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (--force without a terminal needs it)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be re-delivered and the plans")] = False,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
    progress_every: Annotated[
        int, typer.Option(min=1, help="without a terminal, a progress line on stderr every N events")
    ] = 500,
) -> None:
    """Re-deliver events from the WEBHOOKS stream, through the same idempotency as live traffic.

    --force over a --subject releases every quarantined event it matches, so it asks first on
    a terminal and needs --yes without one (exit 2 otherwise); --dry-run changes nothing and
    never asks. Progress goes to stderr (a bar on a terminal, else a line every
    --progress-every events) and the command ends with a summary; --dry-run lists each event
    and its plan.

    Examples:

        dfm replay --subject 'webhooks.aloware.contact.>' --since 2025-01-01T09:00 --dry-run

        dfm replay --subject 'webhooks.ghl.>' --from-seq 1200 --to-seq 1450

        dfm replay --subject 'webhooks.aloware.>' --force --yes -o json
    """
    if not subject and not event_id:
        _fail("give --subject (with an optional time or sequence range) or --event-id")
    if force and subject and not dry_run:
        confirm_or_exit(
            f"Replay every event on {subject} in the range given, releasing the quarantined ones?",
            yes=yes,
            refusal=f"replay --force releases every quarantined event on {subject}",
            command="replay",
        )
    _replay(
        subject=subject,
        since=since,
        until=until,
        from_seq=from_seq,
        to_seq=to_seq,
        event_ids=[_parse_id(i) for i in event_id or []],
        force=force,
        dry_run=dry_run,
        output=chosen(output, as_json),
        progress_every=progress_every,
    )


def _replay(*, output: Output = Output.TABLE, progress_every: int = 500, **fields: Any) -> None:
    from pydantic import ValidationError

    from contracts.commands import ReplayRequested

    try:
        command = ReplayRequested(requested_by="cli", **fields)
    except ValidationError as exc:
        _fail(exc.errors()[0]["msg"])
    settings = tool_settings("replay")

    import time
    from collections import Counter

    from services.tooling.progress import reporter

    async def go() -> Any:
        async with _jobs(settings, explain=command.dry_run) as jobs:
            jobs.replayer.progress = reporter("replay", progress_every, unit="events", what="events")
            return await jobs.execute(command)

    started = time.monotonic()
    report = _run(go())
    seconds = time.monotonic() - started
    if output is Output.JSON:
        print_json(report.as_json())
        return
    verb = "would replay" if command.dry_run else "replayed"
    if command.dry_run:  # a preview: each event and its plan
        for item in report.items:
            state = f"{item.action}" + (f" ({item.reason})" if item.reason else "")
            typer.echo(
                f"{item.event_id}  {item.subject}  was={item.status_before}  {state}  "
                f"consumers={','.join(item.consumers) or '-'}"
            )
            for line in item.plan:
                typer.echo(f"    {line}")
    else:  # a summary: the skipped ones by reason
        for reason, count in Counter(i.reason for i in report.items if i.action == "skipped").most_common():
            typer.echo(f"skipped {count}: {reason}")
    rate = len(report.items) / seconds if seconds > 0 else 0.0
    typer.echo(
        f"scanned {report.scanned} stream messages; {verb} {report.replayed}, skipped {report.skipped} "
        f"in {seconds:.1f} s ({rate:.0f} events/s)"
    )


def sweep(
    here: Annotated[bool, typer.Option(help="run the sweep in this process and print its totals")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Ask the jobs service for a pending sweep now (or run one here with --here).

    Examples:

        dfm sweep

        dfm sweep --here -o json
    """
    from contracts.commands import SweepRequested

    command = SweepRequested(requested_by="cli")
    if here:
        settings = tool_settings("replay")

        async def run_here() -> Any:
            async with _jobs(settings) as jobs:
                return await jobs.execute(command)

        report = _run(run_here())
        totals = {"runId": report.run_id, **report.as_json()}
        if output is Output.JSON:
            print_json(totals)
        else:
            print_fields(_flatten(totals))
        return
    settings = tool_settings("sweep")

    async def queue() -> int:
        from contracts.subjects import SWEEP_SUBJECT
        from services.infra.broker import connect

        nc = await connect(settings, name="dfm-cli", max_reconnect_attempts=2)
        try:
            ack = await nc.jetstream().publish(
                SWEEP_SUBJECT,
                command.model_dump_json().encode(),
                headers={"Nats-Msg-Id": f"sweep:manual:{command.command_id}"},
            )
        finally:
            await nc.drain()
        return int(ack.seq)

    try:
        seq = asyncio.run(queue())
    except Exception as exc:  # connection failures are one line  # noqa: BLE001
        _fail(f"cannot queue the sweep: {type(exc).__name__}: {exc}", code=1)
    if output is Output.JSON:
        print_json({"commandId": str(command.command_id), "queued": True, "jobsStreamSeq": seq})
    else:
        typer.echo(f"sweep {command.command_id} queued (jobs stream seq {seq})")


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "never (no budget left)"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def lanes(output: OutputOption = Output.TABLE) -> None:
    """Show ghl-sync's lanes: each one's durable, backlog and expected drain time.

    Backlog is what the durable has not acked yet (pending plus in flight). Drain time is
    backlog x DFM_LANE_REQUESTS_PER_EVENT / GHL budget per second (the window the shared budget
    learned from GHL's X-RateLimit-* headers, else GHL_RATE_LIMIT_PER_10S / 10), the real-time
    lane served first, so the bulk lane's time includes the real-time backlog.
    DFM_BULK_SUBJECTS says which subjects are bulk; `dfm migrate upgrade` applies a change.

    Examples:

        dfm lanes

        dfm lanes -o json
    """
    from contracts.lanes import LANES, Lane, lane_drain_seconds
    from contracts.streams import ghl_sync_lanes

    settings = tool_settings("sweep")  # what it needs: NATS and the database (the learned budget)
    specs = ghl_sync_lanes(settings.dfm_bulk_subjects)
    per_event = settings.dfm_lane_requests_per_event

    async def budget_rate() -> float:
        from services.clients.budget import RateBudget
        from services.infra.db.session import create_engine

        engine = create_engine(settings)
        try:
            return await RateBudget.for_ghl(engine, settings).per_second()
        except Exception:  # noqa: BLE001 - no database at hand: the configured figure
            return settings.ghl_rate_limit_per_10s / 10
        finally:
            await engine.dispose()

    async def read() -> dict[Lane, tuple[int, int]]:
        from services.infra.broker import connect

        nc = await connect(settings, name="dfm-cli", max_reconnect_attempts=2)
        try:
            js = nc.jetstream()
            found: dict[Lane, tuple[int, int]] = {}
            for lane in LANES:
                info = await js.consumer_info(specs[lane].stream, specs[lane].durable)
                found[lane] = (info.num_pending or 0, info.num_ack_pending or 0)
            return found
        finally:
            await nc.close()

    try:
        counts = asyncio.run(read())
    except Exception as exc:  # connection failures and a missing durable are one line  # noqa: BLE001
        _fail(f"cannot read the lanes' durables: {type(exc).__name__}: {exc}", code=1)
    budget_per_s = round(asyncio.run(budget_rate()), 2)
    drain = lane_drain_seconds({lane: sum(counts[lane]) for lane in LANES}, per_event, budget_per_s)
    rows = [
        {
            "lane": lane,
            "durable": specs[lane].durable,
            "pending": counts[lane][0],
            "inFlight": counts[lane][1],
            "drainSeconds": None if drain[lane] == float("inf") else round(drain[lane], 1),
            "subjects": list(specs[lane].filter_subjects),
        }
        for lane in LANES
    ]
    if output is Output.JSON:
        print_json({"budgetPerSecond": budget_per_s, "requestsPerEvent": per_event, "lanes": rows})
        return
    print_table(
        ("lane", "durable", "pending", "in flight", "drain"),
        [(lane, specs[lane].durable, *counts[lane], _duration(drain[lane])) for lane in LANES],
    )
    typer.echo(f"at {budget_per_s:g} GHL requests/s and {per_event:g} requests per event (DFM_LANE_REQUESTS_PER_EVENT)")


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested totals as ``a.b  value`` rows."""
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def trace(event_id: str, output: OutputOption = Output.TABLE, as_json: JsonFlag = False) -> None:
    """An event's life: receipt, stream sequence, deliveries, vendor calls, mappings touched.

    Each delivery per consumer with its outcome, each vendor call (method, path, status,
    latency), the mappings written, the sync_log rows and the current state, in time order.

    Examples:

        dfm trace 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11

        dfm trace 0b5f3c1e-6f1d-4a51-9d6a-2f1f3e0c9a11 -o json | jq '.attemptLog[].vendorCalls'
    """
    from services.tooling.operations import show_event

    settings = tool_settings("trace")

    async def go() -> dict[str, Any]:
        async with _engine(settings) as engine:
            return await show_event(engine, _parse_id(event_id))

    detail = _run(go())
    if chosen(output, as_json) is Output.JSON:
        print_json(detail)
        return
    for line in format_trace(detail):
        typer.echo(line)


def format_trace(d: dict[str, Any]) -> list[str]:
    """The trace as text lines, in time order."""
    lines = [
        f"event {d['id']}  {d['source']} {d['eventType']} ({d.get('canonicalType') or d['table']})  "
        f"entity {d['entityType']}:{d['entityId']}",
        f"  {d['receivedAt']}  received; stream seq {d['streamSeq'] or '-'}; dedupe key {d['dedupeKey']}",
    ]
    for a in d["attemptLog"]:
        via = f" via {a['redrive']}" if a["redrive"] else ""
        lines.append(
            f"  {a['startedAt']}  {a['consumer']} attempt {a['attempt']}{via} "
            f"(stream seq {a['streamSeq'] or '-'}, delivery #{a['numDelivered'] or '-'})"
        )
        for c in a["vendorCalls"]:
            lines.append(f"      {c['vendor']:<8} {c['method']:<6} {c['path']}  → {c['status']}  {c['ms']} ms")
        for m in a["mappings"]:
            ids = " ".join(f"{k}={v}" for k, v in m.items() if k not in ("kind", "action"))
            lines.append(f"      mapping {m['kind']} {m['action']}: {ids}")
        tail = a["outcome"] or ""
        lines.append(f"  {a['finishedAt']}  {a['consumer']} → {a['status']} {tail} {a['detail'] or ''}".rstrip())
    for s in d["syncLog"]:
        lines.append(
            f"  sync_log {s['rule'] or '-'} {s['direction']} {s['status']} "
            f"{s['sourceId']} → {s['targetId'] or '-'} {s['message'] or ''}".rstrip()
        )
    for q in d["quarantine"]:
        lines.append(
            f"  {q['quarantinedAt']}  quarantined: {q['reason']}"
            + (f" (released {q['releasedAt']})" if q["releasedAt"] else "")
        )
    for dl in d["deliveries"]:
        lines.append(
            f"  now: {dl['consumer']} {dl['status']} {dl['outcome'] or ''} "
            f"attempts={dl['attempts']} {dl['lastError'] or ''}".rstrip()
        )
    reason = d["errorMessage"] or d["outcomeReason"] or ""
    lines.append(f"  event status {d['status']} {d['outcome'] or ''} {reason}".rstrip())
    return lines


def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, delete nothing")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Apply the retention ages now (what the scheduler's ``jobs.purge`` does daily).

    One line per table with the rows deleted or emptied as it goes (or, with --dry-run, that
    would be); -o json prints one document at the end.

    Examples:

        dfm purge --dry-run

        dfm purge -o json
    """
    from contracts.commands import PurgeRequested
    from services.jobs.purge import Purger

    settings = tool_settings("purge")
    tables: dict[str, int] = {}

    async def go() -> Any:
        async with _engine(settings) as engine:

            async def shown(name: str, count: int) -> None:
                tables[name] = tables.get(name, 0) + count
                if output is Output.TABLE:
                    typer.echo(f"{name:<34} {count}")

            return await Purger(settings, engine).run(
                PurgeRequested(dry_run=dry_run, requested_by="cli"), progress=shown
            )

    report = _run(go())
    if output is Output.JSON:
        print_json({"dryRun": dry_run, "tables": tables, "total": report.total, "batches": report.batches})
    elif dry_run:
        typer.echo(f"dry run: nothing deleted; {report.total} rows would be purged")
    else:
        typer.echo(f"purged {report.total} rows in {report.batches} batches")


agents_app = typer.Typer(help="The agent directory behind the call lists.", no_args_is_help=True)


@agents_app.command("seed")
def agents_seed(output: OutputOption = Output.TABLE) -> None:
    """Insert or update CHRIS, RAFI and UNASSIGNED, matched to GHL and Aloware users by name.

    Examples:

        dfm agents seed
    """
    from services.clients.aloware import AlowareClient
    from services.clients.ghl import GhlClient
    from services.tooling.agents import seed_agents

    settings = tool_settings("aloware-sync")

    async def go() -> int:
        ghl, alo = GhlClient.from_settings(settings), AlowareClient.from_settings(settings)
        try:
            async with _engine(settings) as engine:
                return await seed_agents(engine, await ghl.list_users(), await alo.list_users())
        finally:
            await ghl.aclose()
            await alo.aclose()

    inserted = _run(go())
    if output is Output.JSON:
        print_json({"inserted": inserted})
    else:
        typer.echo(f"agents seeded: {inserted} inserted")


def backup(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="backup root (default DFM_BACKUP_DIR, else ~/.local/state/dfm/backups)")
    ] = None,
    keep: Annotated[int | None, typer.Option(min=1, help="backups to keep (default DFM_BACKUP_RETENTION)")] = None,
    encrypt: Annotated[
        bool | None,
        typer.Option("--encrypt/--no-encrypt", help="encrypt with DFM_BACKUP_KEY (default: when it is set)"),
    ] = None,
    progress_every: Annotated[
        int, typer.Option(min=1, help="without a terminal, a progress line on stderr every N messages")
    ] = 10_000,
) -> None:
    """Back up the database (pg_dump) and the WEBHOOKS stream (JSON lines, read in batches) into
    a new private (0700) directory.

    On a terminal a progress bar (messages, rate, time left) shows on stderr, else a line every
    --progress-every messages; the last line on stdout sums it up.

      dfm backup --dir /var/backups/dfm --keep 14
    """
    from services.tooling.backup import backup as run_backup
    from services.tooling.backup import backup_root
    from services.tooling.progress import reporter

    settings = tool_settings("backup")
    root = backup_root(settings, directory)
    try:
        report = asyncio.run(
            run_backup(
                settings,
                root,
                retention=keep or settings.dfm_backup_retention,
                encrypt=encrypt,
                progress=reporter("backup", progress_every),
            )
        )
    except Exception as exc:  # tool failures are one line  # noqa: BLE001
        _fail(f"backup failed: {exc}", code=1)
    typer.echo(
        f"backup {report.path}: database {report.database_bytes} bytes, {report.messages} stream messages "
        f"({report.stream_bytes} bytes) in {report.seconds:.1f} s" + (", encrypted" if report.encrypted else "")
    )


def restore(
    source: Annotated[Path, typer.Argument(help="a directory written by `dfm backup`")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (needed without a terminal)")] = False,
    progress_every: Annotated[
        int, typer.Option(min=1, help="without a terminal, a progress line on stderr every N messages")
    ] = 10_000,
) -> None:
    """Restore a backup into DATABASE_URL (replacing what is there) and NATS_URL's WEBHOOKS stream.

    Asks first on a terminal; without one it needs --yes (exit 2 otherwise). The stream file is
    read line by line, so memory stays flat whatever its size.

      dfm restore ~/.local/state/dfm/backups/20250101T020000000000Z --yes
    """
    import sys

    from services.tooling.backup import BackupError, describe_backup, describe_target
    from services.tooling.backup import restore as run_restore
    from services.tooling.progress import reporter

    settings = tool_settings("backup")
    try:
        about = describe_backup(source)
    except BackupError as exc:
        _fail(f"restore failed: {exc}", code=1)
    if not yes:
        target = describe_target(settings)
        if not sys.stdin.isatty():
            _fail(f"restore replaces {target}; no terminal to confirm on: pass --yes", code=2)
        if not typer.confirm(f"Restore {about} into {target}, replacing what is there?", default=False, err=True):
            _fail("restore not confirmed: nothing changed", code=1)
    try:
        result = asyncio.run(run_restore(settings, source, progress=reporter("restore", progress_every)))
    except Exception as exc:  # tool failures are one line  # noqa: BLE001
        _fail(f"restore failed: {exc}", code=1)
    typer.echo(
        f"restored {source}: database and {result.messages} stream messages ({result.bytes} bytes) "
        f"in {result.seconds:.1f} s"
    )


effects_app = typer.Typer(
    help="Irreversible vendor writes (SMS, notes, messages, contacts) whose outcome is unknown.\n\n"
    "Such a write may or may not have reached the vendor (a timeout or 5xx after the request): its "
    "delivery is dead with outcome_unknown and nothing resends it. Check the vendor, then resolve:\n\n"
    "  dfm effects list\n\n"
    "  dfm effects resolve m2:<GHL messageId> --sent --vendor-id <id>   # it happened\n\n"
    "  dfm effects resolve note:aloware:call:<id> --not-sent            # it did not: next replay writes\n\n"
    "then `dfm events replay <event id>`.",
    no_args_is_help=True,
)


@effects_app.command("list")
def effects_list(output: OutputOption = Output.JSON) -> None:
    """Claims in state unknown, oldest first (key, effect, event id, detail); JSON unless
    -o table (scripts read it as it always was).

    Examples:

        dfm effects list

        dfm effects list -o table
    """
    from services.domain.effects import list_unknown

    settings = tool_settings("events")

    async def go() -> list[dict[str, Any]]:
        async with _engine(settings) as engine, engine.connect() as conn:
            return await list_unknown(conn)

    claims = _run(go())
    if output is Output.JSON:
        print_json(claims)
        return
    columns = list(claims[0]) if claims else ["key", "effect", "eventId", "detail"]
    print_table(columns, [[c.get(k) for k in columns] for c in claims])


@effects_app.command("resolve")
def effects_resolve(
    key: str,
    sent: Annotated[bool, typer.Option("--sent/--not-sent", help="what the vendor shows")],
    vendor_id: Annotated[str | None, typer.Option(help="the vendor's id of the write, when sent")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """--sent records the write done (a replay then does not write); --not-sent deletes the
    claim (the next replay writes once). Check the vendor first.

    Examples:

        dfm effects resolve m2:<GHL messageId> --sent --vendor-id <id>

        dfm effects resolve note:aloware:call:<id> --not-sent
    """
    from services.domain.effects import resolve

    settings = tool_settings("events")

    async def go() -> bool:
        async with _engine(settings) as engine, engine.begin() as conn:
            return await resolve(conn, key, "sent" if sent else "not_sent", vendor_id)

    if not _run(go()):
        _fail(f"no unknown or claimed effect {key}", 1)
    if output is Output.JSON:
        print_json({"key": key, "resolved": "sent" if sent else "not_sent"})
    else:
        typer.echo(f"{key}: resolved {'sent' if sent else 'not sent'}")


# --- dfm nats: identities and the topology step (services/infra/nats_auth.py) -------------
nats_app = typer.Typer(help="NATS identities and the stream topology.", no_args_is_help=True)


@nats_app.command("creds")
def nats_creds(
    out: Annotated[Path, typer.Option(help="directory for the seeds (0600) and auth.inc")],
    rotate: Annotated[bool, typer.Option(help="new seeds; old and new both accepted until finished")] = False,
    finish_rotation: Annotated[bool, typer.Option(help="drop the old seeds: only the new are accepted")] = False,
) -> None:
    """Write one nkey seed per identity (<identity>.nk) and the servers' auth.inc (public keys and
    permissions, no secret). Existing seeds are kept; see deploy/README.md "NATS identities".

    Examples:

        dfm nats creds --out /etc/dfm/nats

        dfm nats creds --out /etc/dfm/nats --rotate
    """
    from services.infra.nats_auth import write_credentials

    if rotate and finish_rotation:
        _fail("--rotate and --finish-rotation are two steps: run one, reload the servers, then the other")
    try:
        conf = write_credentials(out, rotate=rotate, finish_rotation=finish_rotation)
    except (OSError, ValueError) as exc:
        _fail(str(exc), code=1)
    step = (
        "rotation started: reload the servers, move services to the new seeds, then --finish-rotation"
        if rotate
        else "rotation finished: reload the servers"
        if finish_rotation
        else "ready"
    )
    typer.echo(f"{conf} and the seeds in {out}: {step}")


@nats_app.command("certs")
def nats_certs(
    out: Annotated[Path, typer.Option(help="directory for ca.pem, ca-key.pem, server-cert.pem, server-key.pem")],
    host: Annotated[
        list[str] | None,
        typer.Option(help="a name or IP clients and routes dial (repeat; default localhost, 127.0.0.1, nats)"),
    ] = None,
) -> None:
    """Write a private CA and a NATS server certificate signed by it (the servers' tls blocks read
    them from /etc/nats/tls; clients get ca.pem as NATS_TLS_CA_FILE). An existing CA is kept, so
    running it again renews the server certificate without touching the clients; see
    deploy/README.md "NATS TLS".

    Examples:

        dfm nats certs --out /etc/dfm/nats-tls --host nats-1.internal --host 10.0.0.5
    """
    from services.infra.nats_auth import DEFAULT_TLS_HOSTS, write_certificates

    hosts = host or list(DEFAULT_TLS_HOSTS)
    try:
        write_certificates(out, hosts)
    except (OSError, ValueError) as exc:
        _fail(str(exc), code=1)
    typer.echo(
        f"{out}: ca.pem (every client), server-cert.pem and server-key.pem (the servers), "
        f"ca-key.pem (keep offline); hosts {', '.join(hosts)}"
    )


def run_topology(settings: Settings, *, allow_downgrade: bool | None = None, wait_s: float = 60.0) -> None:
    """The topology step as the admin identity, waiting up to ``wait_s`` for NATS to come up
    (it starts next to the migrations in compose)."""
    import time

    from services.infra.broker import TopologyDowngrade, prepare_topology

    deadline = time.monotonic() + wait_s
    while True:
        try:
            asyncio.run(
                prepare_topology(settings.model_copy(update={"nats_identity": None}), allow_downgrade=allow_downgrade)
            )
            return
        except (TopologyDowngrade, ConfigError) as exc:
            _fail(str(exc))
        except Exception as exc:  # NATS not up yet, or refused: retried, then one line  # noqa: BLE001
            if time.monotonic() >= deadline:
                _fail(f"topology step failed: {type(exc).__name__}: {exc}", code=1)
            time.sleep(1.0)  # NATS start-up poll


@nats_app.command("topology")
def nats_topology(
    allow_downgrade: Annotated[bool, typer.Option(help="allow lowering replicas or max_age")] = False,
) -> None:
    """Create or update the streams and durables to the settings (admin identity); refuses to
    lower a stream's replicas or retention unless --allow-downgrade.

    Examples:

        dfm nats topology

        DFM_STREAM_REPLICAS=1 dfm nats topology --allow-downgrade
    """
    settings = tool_settings("nats")
    try:
        settings.require("nats_url")
    except ConfigError as exc:
        _fail(str(exc))
    run_topology(settings, allow_downgrade=allow_downgrade or None, wait_s=10.0)
    typer.echo("streams WEBHOOKS and JOBS and their durables ready")
