"""An event's life in time order, from what ``operations.show_event`` returns (the data
``dfm trace`` prints): received and its stream sequence, each consumer's deliveries with their
vendor calls and the mappings they touched, the ``sync_log`` rows and quarantine records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "timeline"]


@dataclass
class Entry:
    """One line of the timeline; ``calls`` and ``mappings`` belong to a delivery attempt."""

    at: str
    kind: str  # received | attempt | sync_log | quarantine | released
    title: str
    status: str | None = None
    detail: str | None = None
    consumer: str | None = None
    finished_at: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)


def timeline(d: dict[str, Any]) -> list[Entry]:
    """The entries of event detail ``d`` sorted by time (receipt first on a tie)."""
    entries = [
        Entry(
            d["receivedAt"],
            "received",
            "received",
            detail=f"stream seq {d['streamSeq'] or '-'} · dedupe key {d.get('dedupeKey') or '-'}",
        )
    ]
    for a in d.get("attemptLog", []):
        via = f" via {a['redrive']}" if a.get("redrive") else ""
        entries.append(
            Entry(
                a["startedAt"] or d["receivedAt"],
                "attempt",
                f"{a['consumer']} attempt {a['attempt']}{via}",
                status=a["status"],
                detail=" · ".join(
                    x
                    for x in (
                        f"stream seq {a['streamSeq'] or '-'}",
                        f"delivery #{a['numDelivered'] or '-'}",
                        a.get("outcome") or "",
                        a.get("detail") or "",
                    )
                    if x
                ),
                consumer=a["consumer"],
                finished_at=a.get("finishedAt"),
                calls=list(a.get("vendorCalls") or []),
                mappings=[
                    {
                        "kind": m.get("kind"),
                        "action": m.get("action"),
                        "ids": " ".join(f"{k}={v}" for k, v in m.items() if k not in ("kind", "action")),
                    }
                    for m in a.get("mappings") or []
                ],
            )
        )
    for s in d.get("syncLog", []):
        entries.append(
            Entry(
                s["startedAt"] or d["receivedAt"],
                "sync_log",
                f"sync_log {s.get('rule') or '-'} {s['direction']}",
                status=s["status"],
                detail=f"{s['sourceId']} → {s.get('targetId') or '-'}"
                + (f" · {s['message']}" if s.get("message") else ""),
            )
        )
    for q in d.get("quarantine", []):
        entries.append(
            Entry(
                q["quarantinedAt"],
                "quarantine",
                "quarantined",
                status="quarantined",
                detail=f"{q['reason']}" + (f" (by {q['quarantinedBy']})" if q.get("quarantinedBy") else ""),
            )
        )
        if q.get("releasedAt"):
            entries.append(
                Entry(
                    q["releasedAt"],
                    "released",
                    "released from quarantine",
                    detail=f"by {q['releasedBy']}" if q.get("releasedBy") else None,
                )
            )
    order = {"received": 0, "quarantine": 1, "released": 2, "attempt": 3, "sync_log": 4}
    entries.sort(key=lambda e: (e.at, order[e.kind]))
    return entries
