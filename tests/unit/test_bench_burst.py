"""The burst benchmark's figures (bench/burst/figures.py) on a small synthetic sandbox log:
the bench reports what the log says, so a wrong sum here would be a wrong result there."""

from __future__ import annotations

import math

import pytest

from bench.burst.figures import (
    Sent,
    drain,
    endpoints,
    latencies,
    percentile,
    requests_per_event,
    status_counts,
    trace_id,
    traceparent,
)

A, B, C, D = "a" * 32, "b" * 32, "c" * 32, "d" * 32


def call(trace: str | None, method: str, path: str, status: int, at: float) -> dict[str, object]:
    return {
        "vendor": "ghl",
        "method": method,
        "path": path,
        "status": status,
        "at": at,
        "traceparent": f"00-{trace}-{'1' * 16}-01" if trace else None,
    }


SENT = [
    Sent(A, "contact", 200, "accepted", "e1", sent_at=99.5, accepted_at=100.0),
    Sent(B, "contact", 200, "accepted", "e2", sent_at=99.6, accepted_at=100.5),
    Sent(C, "call", 200, "accepted", "e3", sent_at=101.0, accepted_at=101.0),
    Sent(D, "text", 200, "accepted", "e4", sent_at=102.0, accepted_at=102.0),
    Sent("e" * 32, "stop", 429, None, None, sent_at=103.0, accepted_at=None),  # never accepted
]
LOG = [
    call(A, "GET", "/contacts/search/duplicate", 200, 100.2),
    call(A, "POST", "/contacts/", 429, 100.3),  # refused: a request, not a write
    call(A, "POST", "/contacts/", 201, 111.0),
    call(B, "GET", "/contacts/search/duplicate", 200, 100.7),
    call(B, "POST", "/contacts/", 201, 130.0),  # the last contact write: drain ends here
    call(C, "POST", "/contacts/ghlContact00000001/notes", 201, 101.4),
    call(C, "PUT", "/contacts/ghlContact00000001", 200, 103.0),  # the call's last write
    call(D, "POST", "/conversations/messages/inbound", 422, 102.2),  # invalid: no write
    call(None, "GET", "/contacts/ghlContact00000002", 200, 104.0),  # an echo's lookup: no sent event's trace
]


def test_trace_id_is_the_second_field_of_a_traceparent_and_round_trips() -> None:
    assert trace_id(f"00-{A}-{'1' * 16}-01") == A
    assert trace_id(traceparent(B)) == B
    assert trace_id(None) is None
    assert trace_id("garbage") is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_requests_per_event_counts_every_request_of_an_events_trace_by_class() -> None:
    per = requests_per_event(SENT, LOG)
    assert per.requests == {"contact": 5, "call": 2, "text": 1, "stop": 0}
    assert per.events == {"contact": 2, "call": 1, "text": 1, "stop": 0}
    assert per.per_event("contact") == 2.5
    assert math.isnan(per.per_event("stop"))
    assert per.unattributed == 1


def test_drain_runs_from_the_first_contact_accepted_to_the_last_contacts_last_write() -> None:
    result = drain(SENT, LOG, per_10s=100)
    assert result.seconds == pytest.approx(30.0)  # 100.0 → 130.0
    assert result.lower_bound_s == pytest.approx(0.2)  # 2 contacts at 10/s
    assert result.ratio == pytest.approx(150.0)
    assert result.without_write == 0


def test_drain_counts_contacts_that_never_got_a_write() -> None:
    log = [c for c in LOG if not (c["traceparent"] and B in str(c["traceparent"]) and c["method"] == "POST")]
    result = drain(SENT, log, per_10s=100)
    assert result.without_write == 1
    assert result.seconds == pytest.approx(11.0)  # only A's write is left


def test_latency_is_accepted_to_the_events_last_successful_write() -> None:
    values, without = latencies(SENT, LOG, kinds=("call", "text", "stop"))
    assert values == [pytest.approx(2.0)]  # C: 101.0 → 103.0; D's only request was refused
    assert without == 1  # D accepted, no write; E was never accepted


def test_status_counts_reads_429s_and_openapi_rejections() -> None:
    counts = status_counts(LOG)
    assert counts.too_many == 1
    assert counts.invalid == 1
    assert counts.total == len(LOG)


def test_endpoints_group_requests_by_class_with_ids_folded() -> None:
    found = endpoints(SENT, LOG)
    assert found["contact"] == {"POST /contacts/": 3, "GET /contacts/search/duplicate": 2}
    assert found["call"] == {"POST /contacts/{id}/notes": 1, "PUT /contacts/{id}": 1}
    assert found["unattributed"] == {"GET /contacts/{id}": 1}
