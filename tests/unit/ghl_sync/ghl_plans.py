"""Plumbing of the ghl-sync planner tables: fixtures as the ingress turns them into envelopes,
a context, and scripted answers per operation (what PostgreSQL and the vendors would say)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import AuthInfo, WebhookEvent
from services.domain.rules import RuleContext
from services.ghl_sync.routes import route_for
from services.ghl_sync.rules.broadcasts import VERITY_DATABASE
from services.ghl_sync.rules.calls import NOTE_MAX_CHARS
from services.ghl_sync.rules.contact import SNAPSHOT_MAX_AGE, SYNC_ALOWARE_TO_GHL, SYNC_GHL_TO_ALOWARE
from services.ghl_sync.rules.ops import Done, EventRef, Operation, Plan
from services.ingress.classify import (
    Classified,
    classify_aloware,
    classify_broadcast,
    classify_texting,
)
from tests.conftest import load_fixture

NOW = datetime(2025, 3, 10, 18, 0, 5, tzinfo=UTC)
ALL_ON = (SYNC_ALOWARE_TO_GHL, SYNC_GHL_TO_ALOWARE, VERITY_DATABASE)


def ctx(
    *,
    off: tuple[str, ...] = (),
    attempt: int = 1,
    replay: bool = False,
    mode: str = "merge",
    note_max: int = 50_000,
    snapshot_max_age_s: float = 3600,
) -> RuleContext:
    """A context with every ghl-sync switch on except ``off``."""
    return RuleContext(
        now=NOW,
        attempt=attempt,
        replay=replay,
        source_of_truth=mode,
        flags=frozenset(ALL_ON) - frozenset(off),
        limits={NOTE_MAX_CHARS: note_max, SNAPSHOT_MAX_AGE: snapshot_max_age_s},
    )


def body(fixture: str, **changes: Any) -> dict[str, Any]:
    """A fixture's body with ``changes`` (None removes a key; ``body`` merges into Aloware's)."""
    found = load_fixture(fixture)
    if isinstance(changes.get("body"), dict) and isinstance(found.get("body"), dict):
        changes = {**changes, "body": {k: v for k, v in {**found["body"], **changes["body"]}.items() if v is not None}}
    return {k: v for k, v in {**found, **changes}.items() if v is not None}


def event(fixture: str, **changes: Any) -> WebhookEvent:
    """The envelope the ingress makes of a webhook fixture (``aloware/…``, ``texting/…``,
    ``broadcast/…``), received at ``NOW``."""
    payload = body(fixture, **changes)
    folder = fixture.split("/")[0]
    if folder == "aloware":
        classified = classify_aloware(payload, allow_list=[])
    elif folder == "texting":
        classified = classify_texting(payload)
    else:
        classified = classify_broadcast(payload, received_at=NOW)
    assert isinstance(classified, Classified), classified
    envelope = classified.envelope(AuthInfo(method="internal", verified=True), payload)
    return envelope.model_copy(update={"received_at": NOW})


def ref(envelope: WebhookEvent) -> EventRef:
    return EventRef(envelope.dedupe_key, envelope.received_at, envelope.entity_id)


def plan_of(envelope: WebhookEvent, context: RuleContext | None = None) -> Plan:
    """The plan the dispatch table makes of an envelope."""
    route = route_for(envelope)
    assert route is not None, envelope.canonical_type
    return route.plan(envelope, context or ctx())


Answers = Sequence[tuple[Any, Any]]


def run(plan: Plan, answers: Answers = ()) -> tuple[list[Operation], Done | BaseException]:
    """Drive ``plan`` with scripted answers: the first ``(key, answer)`` whose key equals the
    operation, or is its type, answers it (a callable is called with the operation); else
    None. The operations yielded, and how the plan ended (or the error it raised)."""
    seen: list[Operation] = []
    reply: Any = None
    try:
        while True:
            op = plan.send(reply)
            seen.append(op)
            reply = None
            for key, answer in answers:
                if key == op or (isinstance(key, type) and isinstance(op, key)):
                    reply = answer(op) if callable(answer) and not isinstance(answer, type) else answer
                    break
    except StopIteration as stop:
        return seen, stop.value
    except Exception as exc:
        return seen, exc
