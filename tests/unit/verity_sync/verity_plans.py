"""Plumbing of the verity-sync planner tables: fixtures as the ingress turns them into
envelopes, a context, and a scripted executor (answers per operation)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import AuthInfo, WebhookEvent
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.ingress.classify import Classified, classify_ghl, classify_provider
from services.verity_sync.rules.ops import Operation, Plan, drive
from tests.conftest import load_fixture

NOW = datetime(2025, 3, 5, 18, 0, 2, tzinfo=UTC)
SIGNATURE = "c2lnbmF0dXJlLW9mLWdobA=="


def ctx(*flags: str, attempt: int = 1, region: str = "US") -> RuleContext:
    return RuleContext(now=NOW, attempt=attempt, region=region, flags=frozenset(flags))


def ghl_event(fixture: str, **changes: Any) -> WebhookEvent:
    """The envelope the ingress makes of a GHL fixture (raw bytes and signature kept);
    ``changes`` edit the body first (None removes a key)."""
    body = {k: v for k, v in {**load_fixture(fixture), **changes}.items() if v is not None}
    classified = classify_ghl(body, expected_location_id=None)
    assert isinstance(classified, Classified), classified
    raw = json.dumps(body).encode()
    return classified.envelope(AuthInfo(method="ed25519", verified=True), body, raw=raw, signature=SIGNATURE)


def provider_event(fixture: str, **changes: Any) -> WebhookEvent:
    body = {**load_fixture(fixture), **changes}
    classified = classify_provider(body)
    assert isinstance(classified, Classified), classified
    return classified.envelope(AuthInfo(method="ed25519", verified=True), body)


def raw_b64(event: WebhookEvent) -> str:
    assert event.payload_raw is not None
    return base64.b64encode(event.payload_raw).decode()


Answers = Sequence[tuple[Any, Any]]


def run(plan: Plan, answers: Answers = ()) -> tuple[list[Operation], Outcome | BaseException]:
    """Drive ``plan`` with scripted answers: the first ``(key, answer)`` whose key equals
    the operation, or is its type, answers it (an exception is thrown in); else None. The
    operations yielded, and the outcome or the error the plan raised."""
    seen: list[Operation] = []

    def answer(op: Operation) -> Any:
        seen.append(op)
        for key, value in answers:
            if key == op or (isinstance(key, type) and isinstance(op, key)):
                return value
        return None

    try:
        _, outcome = drive(plan, answer)
    except Exception as exc:
        return seen, exc
    return seen, outcome
