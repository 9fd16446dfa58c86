"""B-1 … B-5 as a table (spec/outbound.md §1.12): a broadcast analytics fixture + the mapped
record + Verity's figures → the operations and how the delivery ends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.ghl_sync.rules.broadcasts import OBJECT_KEY, VERITY_DATABASE
from services.ghl_sync.rules.ops import (
    Done,
    FindObjectRecord,
    LockContact,
    LogSync,
    ObjectRecord,
    ReadBroadcastFigures,
    UpsertObjectRecord,
)
from services.infra.errors import Permanent
from tests.unit.ghl_sync.ghl_plans import NOW, Answers, ctx, event, plan_of, run

FIGURES = {
    "broadcast_id": "brdDemo-0001",
    "recipients": 3,
    "sent": 3,
    "delivered": 2,
    "responses": 1,
    "delivery_rate": 0.6667,
}
LOGGED = {"recipients": 3, "delivered": 2, "responses": 1}
HEAD = [LockContact("broadcast:brdDemo-0001"), FindObjectRecord(OBJECT_KEY, "brdDemo-0001")]


def b(status: str, **rest: Any) -> LogSync:
    return LogSync("texting_to_ghl", "broadcast", "brdDemo-0001", status, "B", **rest)  # type: ignore[arg-type]


CASES: list[tuple[str, str, Answers, list[Any], Done]] = [
    (
        "B-2/B-3: the figures are recomputed and a new record is written",
        "broadcast/analytics_updated.json",
        [(ReadBroadcastFigures, FIGURES), (UpsertObjectRecord, "rec1")],
        [
            *HEAD,
            ReadBroadcastFigures("brdDemo-0001"),
            UpsertObjectRecord(OBJECT_KEY, "brdDemo-0001", FIGURES, None),
            b("success", target_id="rec1", details=LOGGED),
        ],
        Done("applied"),
    ),
    (
        "B-3: the mapped record is written in place",
        "broadcast/broadcast_completed.json",
        [
            (FindObjectRecord, ObjectRecord("rec1", NOW - timedelta(minutes=1))),
            (ReadBroadcastFigures, FIGURES),
            (UpsertObjectRecord, "rec1"),
        ],
        [
            *HEAD,
            ReadBroadcastFigures("brdDemo-0001"),
            UpsertObjectRecord(OBJECT_KEY, "brdDemo-0001", FIGURES, "rec1"),
            b("success", target_id="rec1", details=LOGGED),
        ],
        Done("applied"),
    ),
    (
        "B-5: an event received before the last recomputation finished is coalesced",
        "broadcast/analytics_updated.json",
        [(FindObjectRecord, ObjectRecord("rec1", NOW + timedelta(seconds=1)))],
        [*HEAD, b("skipped", target_id="rec1", message="coalesced")],
        Done("skipped", "coalesced"),
    ),
]


@pytest.mark.parametrize(("fixture", "answers", "expected", "done"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_broadcast_analytics(fixture: str, answers: Answers, expected: list[Any], done: Done) -> None:
    assert run(plan_of(event(fixture)), answers) == (expected, done)


def test_without_verity_s_database_nothing_is_read() -> None:
    assert run(plan_of(event("broadcast/analytics_updated.json"), ctx(off=(VERITY_DATABASE,)))) == (
        [b("skipped", message="verity_database_not_configured")],
        Done("skipped", "verity_database_not_configured"),
    )


def test_a_broadcast_verity_does_not_know_is_permanent() -> None:
    ops, error = run(plan_of(event("broadcast/analytics_updated.json")), [(ReadBroadcastFigures, None)])
    assert ops == [*HEAD, ReadBroadcastFigures("brdDemo-0001")]
    assert isinstance(error, Permanent) and error.reason == "broadcast brdDemo-0001 not found in Verity"
