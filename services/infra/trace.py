"""What one delivery of an event did, collected while its rule runs.

``EventConsumer`` opens an :class:`AttemptTrace` around each rule; the vendor HTTP client
and the mapping store append to it through a context variable, and the ledger writes it
as one ``event_attempts`` row together with the delivery's end state. ``dfm trace`` reads
those rows back. Nothing is collected outside a delivery (the variable is then unset).
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID


@dataclass
class AttemptTrace:
    """Vendor calls, mapping changes and sync_log rows of one delivery."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    stream_seq: int | None = None
    num_delivered: int | None = None
    replay_of: str | None = None
    vendor_calls: list[dict[str, Any]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    # sync_log error rows the rule wrote itself: the ledger then adds no row of its own for a
    # failed attempt, only the cause to these (services/infra/delivery.py)
    sync_errors: list[UUID] = field(default_factory=list)
    # the rule's other sync_log rows (success, skipped): written by the ledger's finish
    # statement with the attempt's end state, one round trip fewer per rule
    sync_rows: list[dict[str, Any]] = field(default_factory=list)


CURRENT: ContextVar[AttemptTrace | None] = ContextVar("dfm_attempt_trace", default=None)


def vendor_call(vendor: str, method: str, path: str, status: str, seconds: float) -> None:
    """Note a vendor request (path without its query: no phone numbers or tokens)."""
    trace = CURRENT.get()
    if trace is not None:
        trace.vendor_calls.append(
            {
                "vendor": vendor,
                "method": method,
                "path": path.split("?", 1)[0],
                "status": status,
                "ms": round(seconds * 1000, 1),
                "at": datetime.now(UTC).isoformat(),
            }
        )


def mapping_touched(kind: str, action: str, **ids: str | None) -> None:
    """Note a mapping row written or removed by the rule."""
    trace = CURRENT.get()
    if trace is not None:
        trace.mappings.append({"kind": kind, "action": action, **{k: v for k, v in ids.items() if v is not None}})


def sync_error_logged(row_id: UUID) -> None:
    """Note a ``sync_log`` error row written by the rule (it may yet be rolled back)."""
    trace = CURRENT.get()
    if trace is not None:
        trace.sync_errors.append(row_id)


def defer_sync_row(row: dict[str, Any]) -> bool:
    """Leave a ``sync_log`` row to the delivery's finish (False outside a delivery: the caller
    writes it now). The finish writes it whatever the attempt's end (done, error or dead),
    also where the rule's transaction around it was rolled back; it is lost with the attempt
    when the finish itself fails or the process dies first (the attempt is then run again),
    and dropped, with a ``sync_rows_unstorable`` warning, when PostgreSQL refuses one of its
    values. A row whose ``details`` JSON cannot encode fails here, in the rule, as its own
    INSERT would have. Rows a rule reads back as state are not deferred (``log_sync``'s
    ``immediate``)."""
    trace = CURRENT.get()
    if trace is None:
        return False
    json.dumps(row.get("details"))  # TypeError in the rule, not in the finish
    trace.sync_rows.append(row)
    return True


def is_replay() -> bool:
    """True while handling an operator replay: rules then re-read vendor state instead of
    trusting what they last saw (a contact deleted in the vendor since is recreated)."""
    trace = CURRENT.get()
    return bool(trace and trace.replay_of and trace.replay_of.startswith("replay:"))
