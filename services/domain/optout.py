"""The opt-out registry (spec/outbound.md §1.9, rules O): keywords, precedence and the one
place that writes ``optout_registry`` (with its append-only ``optout_events`` history).

Every reader asks :func:`is_opted_out` with an E.164 number; every writer goes through
:func:`record`, which applies O-4: an opt-in clears an opt-out only when it comes from the
source that recorded it, is the recipient's own START/UNSTOP, or is an operator's manual
change — an Aloware or GHL opt-in never clears a texting STOP. Events older than the row's
``last_event_at`` change nothing. Writes are serialised per number (row lock), so
concurrent events for one number apply in a well-defined order.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.infra.db.models import OptoutEventRow, OptoutRegistryRow

Status = Literal["opted_out", "opted_in"]
Source = Literal["texting", "ghl", "aloware", "manual"]
Keyword = Literal["opt_out", "opt_in", "help"]
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPT-OUT", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def keyword(text: str | None) -> Keyword | None:
    """O-3: the whole message, trimmed, upper-cased and stripped of surrounding punctuation,
    must *equal* a keyword ("Please don't cancel" is not an opt-out)."""
    if not text:
        return None
    word = _EDGES.sub("", text.strip().upper())
    if word in OPT_OUT_WORDS:
        return "opt_out"
    if word in OPT_IN_WORDS:
        return "opt_in"
    if word in HELP_WORDS:
        return "help"
    return None


@dataclass(frozen=True)
class Decision:
    """Whether a write changes the registry, and why not when it does not."""

    applied: bool
    status: Status
    reason: str | None = None


def decide(
    current_status: str | None,
    current_source: str | None,
    current_at: datetime | None,
    status: Status,
    source: Source,
    reason: str | None,
    at: datetime,
) -> Decision:
    """O-4 as a pure function."""
    if current_status is None:
        return Decision(True, status)
    if current_at is not None and at < current_at:
        return Decision(False, current_status, "stale_event")  # type: ignore[arg-type]
    if status == "opted_in" and current_status == "opted_out":
        allowed = (
            source == current_source
            or source == "manual"
            or (source == "texting" and (reason or "").upper() in OPT_IN_WORDS)
        )
        if not allowed:
            return Decision(False, "opted_out", f"opt_in_blocked_by_{current_source}")
    return Decision(True, status)


async def record(
    conn: AsyncConnection,
    phone: str,
    status: Status,
    source: Source,
    reason: str | None,
    *,
    at: datetime,
    event_id: uuid.UUID | None,
) -> Decision:
    """O-1 with O-4: upsert the number's row (locked while deciding) and append the history.
    Call inside a transaction."""
    await conn.execute(
        pg_insert(OptoutRegistryRow)
        .values(
            phone_number=phone, status=status, source=source, reason=reason, last_event_at=at, last_event_id=event_id
        )
        .on_conflict_do_nothing(index_elements=["phone_number"])
        .returning(OptoutRegistryRow.id)
    )
    row = (
        await conn.execute(select(OptoutRegistryRow).where(OptoutRegistryRow.phone_number == phone).with_for_update())
    ).one()
    fresh = row.last_event_id == event_id and row.status == status and row.source == source
    decision = (
        Decision(True, status)
        if fresh
        else decide(row.status, row.source, row.last_event_at, status, source, reason, at)
    )
    if decision.applied and not fresh:
        await conn.execute(
            update(OptoutRegistryRow)
            .where(OptoutRegistryRow.phone_number == phone)
            .values(
                status=status,
                source=source,
                reason=reason,
                last_event_at=at,
                last_event_id=event_id,
                updated_at=datetime.now(at.tzinfo),
            )
        )
    already = (
        await conn.scalar(
            select(OptoutEventRow.id)
            .where(OptoutEventRow.phone_number == phone, OptoutEventRow.event_id == event_id)
            .limit(1)
        )
        if event_id
        else None
    )
    if already is None:
        await conn.execute(
            insert(OptoutEventRow).values(
                phone_number=phone,
                status=status,
                source=source,
                reason=reason if decision.applied else f"{reason} ({decision.reason})",
                event_id=event_id,
                at=at,
            )
        )
    return decision


async def is_opted_out(conn: AsyncConnection, phone: str | None) -> bool:
    """O-5: the gate every sender and list writer asks (E.164)."""
    if not phone:
        return False
    status = await conn.scalar(select(OptoutRegistryRow.status).where(OptoutRegistryRow.phone_number == phone))
    return status == "opted_out"


def dnc_flag(body: dict[str, Any], top: dict[str, Any]) -> bool:
    """D-1: ``is_dnc``/``dnc`` true, or a ``status`` containing ``dnc``, in an Aloware
    webhook's ``body`` then its top level. Shared by ghl-sync (tags, registry) and
    aloware-sync (list removal), so both read one event the same way."""
    for source in (body, top):
        if source.get("is_dnc") is True or source.get("dnc") is True:
            return True
        if "dnc" in str(source.get("status") or "").lower():
            return True
    return False


def event_time(value: Any, default: datetime) -> datetime:
    """The vendor's own time of the change when it gives a readable one, else ``default``
    (the registry orders opt-outs by it, spec O-4)."""
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)  # 3.11 reads a trailing "Z"
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return default
