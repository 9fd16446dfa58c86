"""Typed error causes (STYLE.md §4): the vendor client says *why* a call failed where it
knows it, and "may this write have landed?" is answered from that cause, never from the
error's text or the chained httpx exception.

The vendor is a real socket on loopback that answers, refuses, stalls or hangs up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from services.clients.http import VendorHttp
from services.domain.effects import may_have_landed
from services.infra.errors import (
    Cause,
    DeadlineExceeded,
    OutcomeUnknown,
    Permanent,
    RetryLater,
)
from services.tooling.embedded import free_port

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def status(code: int) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            f"HTTP/1.1 {code} X\r\ncontent-length: 2\r\ncontent-type: application/json\r\n"
            "connection: close\r\n\r\n{}".encode()
        )
        await writer.drain()
        writer.close()

    return answer


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the whole request, then closes without a byte of answer: it may have acted."""
    await _read_request(reader)
    writer.close()


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request and never answers (a read timeout on our side)."""
    await _read_request(reader)
    await asyncio.sleep(30)


@contextlib.asynccontextmanager
async def vendor(answer: Answer) -> AsyncIterator[VendorHttp]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = VendorHttp("verity", f"http://127.0.0.1:{port}")
    try:
        yield http
    finally:
        await http.aclose()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


async def failure(http: VendorHttp, **kwargs: object) -> Exception:
    with pytest.raises((RetryLater, Permanent)) as caught:
        await http.request("POST", "/send", "send", json={}, **kwargs)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(
    ("code", "family", "cause", "landed"),
    [
        (429, RetryLater, Cause.THROTTLED, False),
        (503, RetryLater, Cause.UNAVAILABLE, False),
        (502, RetryLater, Cause.SERVER_ERROR, True),
        (500, RetryLater, Cause.SERVER_ERROR, True),
        (409, RetryLater, Cause.REFUSED, False),
        (408, RetryLater, Cause.REFUSED, False),
        (400, Permanent, Cause.REFUSED, False),
        (404, Permanent, Cause.REFUSED, False),
        (401, Permanent, Cause.UNAUTHORIZED, False),
        (403, Permanent, Cause.UNAUTHORIZED, False),
    ],
)
async def test_a_vendor_answer_is_a_typed_cause(code: int, family: type[Exception], cause: Cause, landed: bool) -> None:
    async with vendor(status(code)) as http:
        exc = await failure(http)
    assert type(exc) is family
    assert exc.cause is cause and exc.status == code  # type: ignore[attr-defined]
    assert may_have_landed(exc) is landed


async def test_no_connection_proves_the_vendor_did_not_act() -> None:
    http = VendorHttp("verity", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        exc = await failure(http)
    finally:
        await http.aclose()
    assert isinstance(exc, RetryLater) and exc.cause is Cause.NOT_SENT and exc.status is None
    assert may_have_landed(exc) is False


async def test_a_read_timeout_after_the_request_may_have_landed() -> None:
    async with vendor(stall) as http:
        exc = await failure(http, timeout=httpx.Timeout(5.0, read=0.2))
    assert isinstance(exc, RetryLater) and exc.cause is Cause.TIMEOUT
    assert may_have_landed(exc) is True


async def test_a_connection_lost_after_the_request_may_have_landed() -> None:
    async with vendor(hang_up) as http:
        exc = await failure(http)
    assert isinstance(exc, RetryLater) and exc.cause is Cause.CONNECTION_LOST
    assert may_have_landed(exc) is True


def test_our_own_waits_prove_nothing_was_sent() -> None:
    budget = RetryLater(3.0, "rate budget ghl:loc empty", counts_as_attempt=False, cause=Cause.BUDGET)
    held = RetryLater(2.0, "m2:x is being written by another attempt", counts_as_attempt=False, cause=Cause.CLAIM_HELD)
    assert not may_have_landed(budget) and not may_have_landed(held)


def test_unknown_causes_stay_on_the_safe_side() -> None:
    """A failure nobody typed (a rule's own RetryLater, an unexpected exception, a rule past
    its deadline) may have reached the vendor: an irreversible write is not repeated."""
    assert RetryLater(None, "whatever").cause is Cause.UNSPECIFIED
    assert may_have_landed(RetryLater(None, "whatever")) is True
    assert may_have_landed(ValueError("boom")) is True
    deadline = DeadlineExceeded(30)
    assert deadline.cause is Cause.DEADLINE and may_have_landed(deadline) is True
    unknown = OutcomeUnknown("send-message timed out", cause=Cause.TIMEOUT)
    assert unknown.cause is Cause.TIMEOUT and may_have_landed(unknown) is True
    assert unknown.reason == "outcome_unknown: send-message timed out"
    assert may_have_landed(Permanent("invalid payload")) is False


def test_which_causes_prove_the_vendor_did_not_act() -> None:
    assert {c for c in Cause if not c.may_have_acted} == {
        Cause.NOT_SENT,
        Cause.THROTTLED,
        Cause.UNAVAILABLE,
        Cause.REFUSED,
        Cause.UNAUTHORIZED,
        Cause.BUDGET,
        Cause.CLAIM_HELD,
    }
