"""Plumbing of the aloware-sync planner tables: fixtures as the ingress turns them into
envelopes, a context, and a scripted executor (answers per operation)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import AuthInfo, WebhookEvent
from services.aloware_sync.rules.known import FLAG_AGENT_LIST_SYNC, FLAG_POWER_DIALER_LISTS
from services.aloware_sync.rules.ops import Flow, Operation
from services.clients.ghl import GhlContact
from services.domain.rules import RuleContext
from services.infra.errors import Permanent, RetryLater
from services.ingress.classify import Classified, classify_aloware, classify_ghl, classify_texting
from tests.conftest import load_fixture

NOW = datetime(2025, 3, 5, 18, 0, 2, tzinfo=UTC)
LISTS_ON = (FLAG_AGENT_LIST_SYNC, FLAG_POWER_DIALER_LISTS)


def ctx(*flags: str, attempt: int = 1, mode: str = "merge") -> RuleContext:
    return RuleContext(now=NOW, attempt=attempt, source_of_truth=mode, flags=frozenset(flags))


def _body(fixture: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The fixture's body with ``changes`` (None removes a key; ``body`` merges into Aloware's)."""
    body = load_fixture(fixture)
    if "body" in changes and isinstance(body.get("body"), dict):
        changes = {**changes, "body": {**body["body"], **changes["body"]}}
    return {k: v for k, v in {**body, **changes}.items() if v is not None}


def event(fixture: str, **changes: Any) -> WebhookEvent:
    """The envelope the ingress makes of a webhook fixture (``ghl/…``, ``aloware/…``,
    ``texting/…``), received at ``NOW``."""
    body = _body(fixture, changes)
    folder = fixture.split("/")[0]
    if folder == "ghl":
        classified = classify_ghl(body, expected_location_id=None)
    elif folder == "aloware":
        classified = classify_aloware(body, allow_list=[])
    else:
        classified = classify_texting(body)
    assert isinstance(classified, Classified), classified
    envelope = classified.envelope(AuthInfo(method="internal", verified=True), body)
    return envelope.model_copy(update={"received_at": NOW})


def ghl_contact(fixture: str = "ghl/ContactUpdate.json", **changes: Any) -> GhlContact:
    """GHL's answer for a contact (G1), from a marketplace contact body."""
    return GhlContact.model_validate(_body(fixture, changes))


Answers = Sequence[tuple[Any, Any]]


class Then:
    """Answers for an operation asked more than once: the next one each time."""

    def __init__(self, *values: Any) -> None:
        self._values = list(values)

    def __call__(self, op: Operation) -> Any:
        value = self._values.pop(0)
        if isinstance(value, BaseException):
            raise value
        return value


def run(flow: Flow[Any], answers: Answers = ()) -> tuple[list[Operation], Any]:
    """Drive ``flow`` with scripted answers: the first ``(key, answer)`` whose key equals the
    operation, or is its type, answers it (a ``Permanent`` is thrown in, any other exception
    ends the flow as the executor's would); else None. The operations yielded, and the flow's
    result or the error it raised."""
    seen: list[Operation] = []
    value: Any = None
    refused: Permanent | None = None
    try:
        while True:
            try:
                op = flow.throw(refused) if refused is not None else flow.send(value)
            except StopIteration as stop:
                return seen, stop.value
            seen.append(op)
            value, refused = None, None
            for key, answer in answers:
                if key == op or (isinstance(key, type) and isinstance(op, key)):
                    try:
                        if isinstance(answer, BaseException):
                            raise answer
                        value = answer(op) if callable(answer) else answer
                    except Permanent as exc:
                        refused = exc
                    break
    except (RetryLater, Permanent) as exc:  # the flow's own ending: a retry, or a refusal it did not take
        flow.close()
        return seen, exc
