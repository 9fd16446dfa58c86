"""The sandbox's state pieces on their own: GHL's sliding window, the fault book, the request
log and what a reset keeps (services/sandbox/state.py)."""

from __future__ import annotations

from services.infra.settings import Settings
from services.sandbox.ghl.gate import dispatch
from services.sandbox.ghl.request import GhlRequest
from services.sandbox.state import Fault, FaultBook, RateLimiter, RequestLog, Sandbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_admits_up_to_the_limit_per_location_then_slides() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=2, window_s=10.0, clock=clock)
    assert [limiter.admit("loc1") for _ in range(3)] == [True, True, False]
    assert limiter.admit("loc2")
    assert limiter.headers("loc1")["X-RateLimit-Remaining"] == "0"
    clock.now += 10.0  # the first two leave the window exactly when it has passed
    assert limiter.headers("loc1")["X-RateLimit-Remaining"] == "2"
    assert limiter.admit("loc1")


def test_the_headers_say_the_configured_limit_and_interval() -> None:
    limiter = RateLimiter(clock=Clock())
    limiter.configure(3, 2.5)
    limiter.admit("loc1")
    headers = limiter.headers("loc1")
    assert (headers["X-RateLimit-Max"], headers["X-RateLimit-Remaining"]) == ("3", "2")
    assert headers["X-RateLimit-Interval-Milliseconds"] == "2500"


def test_forgetting_the_windows_keeps_the_limit() -> None:
    limiter = RateLimiter(limit=1, clock=Clock())
    assert limiter.admit("loc1") and not limiter.admit("loc1")
    limiter.forget()
    assert limiter.admit("loc1") and not limiter.admit("loc1")


async def test_a_fault_answers_its_vendor_and_path_for_count_calls() -> None:
    book = FaultBook()
    book.add(Fault(vendor="ghl", count=2, status=503, path_contains="/notes"))
    assert await book.take("aloware", "/contacts/1/notes") is None
    assert await book.take("ghl", "/contacts/1") is None
    taken = [await book.take("ghl", "/contacts/1/notes") for _ in range(3)]
    assert [f.status if f else None for f in taken] == [503, 503, None]


async def test_a_latency_only_fault_is_consumed_without_failing_the_call() -> None:
    book = FaultBook()
    book.add(Fault(vendor="ghl", count=1, latency_ms=1))
    book.add(Fault(vendor="ghl", count=1, status=500))
    assert await book.take("ghl", "/users/") is None  # the first live match decides
    failed = await book.take("ghl", "/users/")
    assert failed is not None and failed.status == 500


def test_the_request_log_filters_by_vendor_and_keeps_the_traceparent() -> None:
    log = RequestLog(clock=lambda: 5.0)
    log.record("ghl", "GET", "/users/", 200, None, {"locationId": "loc1"}, "00-abc-def-01")
    log.record("aloware", "GET", "/call-lists", 401, {}, {}, None)
    assert log.calls("ghl") == [
        {
            "vendor": "ghl",
            "method": "GET",
            "path": "/users/",
            "status": 200,
            "body": None,
            "query": {"locationId": "loc1"},
            "at": 5.0,
            "traceparent": "00-abc-def-01",
        }
    ]
    assert [c["vendor"] for c in log.calls()] == ["ghl", "aloware"]


def test_a_reset_empties_the_stores_and_keeps_the_configured_limit_and_provider() -> None:
    sandbox = Sandbox(Settings(ghl_location_id="loc1"))
    sandbox.state.ghl_contacts["c1"] = {"id": "c1"}
    sandbox.log.record("ghl", "GET", "/users/", 200, None, {}, None)
    sandbox.limiter.configure(1, 10.0)
    sandbox.limiter.admit("loc1")
    sandbox.provider_id = "prov2"
    sandbox.reset()
    assert (sandbox.state.ghl_contacts, sandbox.log.calls()) == ({}, [])
    assert (sandbox.limiter.limit, sandbox.provider_id) == (1, "prov2")
    assert sandbox.limiter.admit("loc1")


def test_ghl_paths_no_handler_claims_are_the_sandbox_404() -> None:
    sandbox = Sandbox(Settings(ghl_location_id="loc1"))
    sandbox.state.ghl_contacts["c1"] = {"id": "c1"}

    def call(method: str, path: str) -> tuple[int, object]:
        return dispatch(sandbox, GhlRequest(method, path, {}, None, {}, "loc1"))

    assert call("GET", "/contacts/c1/tasks") == (
        404,
        {"statusCode": 404, "message": "sandbox has no GET /contacts/c1/tasks"},
    )
    assert call("GET", "/contacts/c9") == (404, {"statusCode": 404, "message": "Contact not found"})
    assert call("GET", "/objects/x") == (404, {"statusCode": 404, "message": "sandbox has no GET /objects/x"})
    assert call("GET", "/contacts/c1") == (200, {"contact": {"id": "c1"}})
