"""Shared vendor HTTP plumbing (spec/outbound.md §2.1): one pooled AsyncClient per vendor,
timeouts, metrics, redacted logging, and one mapping of failures to RetryLater/Permanent."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram

from services.infra import tracing
from services.infra.errors import Cause, Permanent, RetryLater, status_cause
from services.infra.logging import get_logger
from services.infra.trace import vendor_call

log = get_logger(__name__)

VENDOR_REQUESTS = Counter("dfm_vendor_requests_total", "Calls to vendor APIs", ["vendor", "endpoint", "status"])
VENDOR_DURATION = Histogram(
    "dfm_vendor_request_duration_seconds",
    "Vendor API latency",
    ["vendor", "endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TIMEOUTS = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
# A pooled connection idle this long is not used again. httpx keeps one for 5 s, and many
# servers (uvicorn, Node.js) close an idle keep-alive connection after 5 s too: a request sent
# on a connection the server is closing at that moment fails with ReadError or "server
# disconnected", after the request may have reached it, so a create's outcome is unknown
# (seen: a GHL contact create on the sandbox after a 5 s lull, its claim left "unknown" and
# the event dead; tests/faults/test_nats_cluster.py). Vendors' own idle limits are not
# documented; 2 s is under every common default but gunicorn's.
KEEPALIVE_EXPIRY_S = 2.0
RETRYABLE_STATUS = frozenset({408, 409, 423, 425, 429})
_SECRET_QUERY = re.compile(r"(api_token|token|key)=[^&]+", re.IGNORECASE)
# RFC 9110 delay-seconds is 1*DIGIT (ASCII); a fraction is tolerated. Not float(): it also
# takes "inf", "nan", "1e400", "1_000" and non-ASCII digits, none of which is a delay.
_DELAY_SECONDS = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,9})?", re.ASCII)
# The longest wait a vendor can ask of one message: an hour (RETRY_MAX_DELAY_S's default).
# Longer is left to the sweep anyway (DFM_RETRY_NAK_MAX_DELAY_S); unbounded would overflow
# the ledger's next_attempt_at and never retry.
MAX_RETRY_AFTER_S = 3600.0


def vendor_limits(max_connections: int, max_keepalive: int | None = None) -> httpx.Limits:
    """A vendor client's pool: ``max_connections``, ``max_keepalive`` of them (all by default)
    kept alive for at most ``KEEPALIVE_EXPIRY_S`` idle."""
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections if max_keepalive is None else max_keepalive,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )


# the Verity proxy's pool, in the gateway and the MCP server: httpx's default size
PROXY_LIMITS = vendor_limits(100, max_keepalive=20)


class VendorError(Exception):
    """A vendor answered with a status we do not treat as success."""

    def __init__(self, vendor: str, status: int, body: Any, url: str) -> None:
        super().__init__(f"{vendor} {status} at {url}")
        self.vendor = vendor
        self.status = status
        self.body = body
        self.url = url


def redact_url(url: str) -> str:
    """A URL without secrets in its query."""
    return _SECRET_QUERY.sub(r"\1=[REDACTED]", url)


def retry_delay(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Delay for a 429 (spec/outbound.md §2.1): ``Retry-After``, else the GHL interval header
    when the budget is 0, else None — the retry policy's back-off schedule (with jitter).

    ``Retry-After`` is delay-seconds or an HTTP-date (RFC 9110 §10.2.3, all three date forms
    of §5.6.7; a date in the past means now). Whatever a vendor sends, the answer is finite
    and within ``[0, MAX_RETRY_AFTER_S]``: a value that is not a delay (``inf``, ``nan``, a
    negative number, garbage) counts as absent rather than as "never" or "at once".
    """
    retry_after = (headers.get("retry-after") or "").strip()
    if retry_after:
        seconds = _decimal(retry_after)
        if seconds is not None:
            return min(seconds, MAX_RETRY_AFTER_S)
        until = _until(retry_after, now or datetime.now(UTC))
        if until is not None:
            return until
    if headers.get("x-ratelimit-remaining") == "0":
        interval_ms = _decimal((headers.get("x-ratelimit-interval-milliseconds") or "").strip())
        if interval_ms is not None:
            return min(interval_ms / 1000, MAX_RETRY_AFTER_S)
    return None


def _decimal(text: str) -> float | None:
    """A non-negative ASCII decimal (finite by construction); None when ``text`` is not one."""
    return float(text) if _DELAY_SECONDS.fullmatch(text) else None


def _until(text: str, now: datetime) -> float | None:
    """Seconds from ``now`` to the HTTP-date ``text`` (GMT), within bounds; None if no date."""
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER_S)


Observe = Callable[[httpx.Response], Awaitable[None]]
"""Something that reads every answer's status and headers, e.g. ``RateBudget.observe``."""


class ObservedTransport(httpx.AsyncBaseTransport):
    """A transport that shows every answer to ``observe`` before the client sees it.

    How the vendor's ``X-RateLimit-*`` headers and 429s reach the shared budget
    (``services.clients.budget``) without the clients knowing about it: give a client
    ``transport=ObservedTransport(budget.observe)``. ``inner`` defaults to an
    ``AsyncHTTPTransport`` with ``max_connections``, as VendorHttp's own pool would be."""

    def __init__(
        self, observe: Observe, inner: httpx.AsyncBaseTransport | None = None, *, max_connections: int = 20
    ) -> None:
        self._observe = observe
        self._inner = inner or httpx.AsyncHTTPTransport(limits=vendor_limits(max_connections))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        await self._observe(response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def parse_body(response: httpx.Response) -> Any:
    """JSON body when there is one, else the text."""
    try:
        return response.json()
    except ValueError:
        return response.text


class VendorHttp:
    """An AsyncClient for one vendor with metrics and error mapping."""

    def __init__(
        self,
        vendor: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
        observe: Observe | None = None,
    ) -> None:
        """``observe`` sees every answer first (``ObservedTransport``), e.g. the rate budget."""
        self.vendor = vendor
        if observe is not None:
            transport = ObservedTransport(observe, transport, max_connections=max_connections)
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Accept": "application/json", **(headers or {})},
            timeout=TIMEOUTS,
            follow_redirects=False,
            limits=vendor_limits(max_connections),
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        ok: tuple[int, ...] = (200, 201),
        passthrough: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """Send; return the response for ``ok`` and ``passthrough`` statuses, else raise.

        ``passthrough`` statuses (e.g. a 404 meaning "not found", a 400 duplicate) are
        returned for the caller to interpret; anything else becomes RetryLater or Permanent.
        """
        started = time.perf_counter()
        status = "error"
        try:
            with tracing.span(
                f"{self.vendor} {endpoint}",
                kind=SpanKind.CLIENT,
                attributes={"http.request.method": method, "dfm.vendor": self.vendor},
            ) as span:
                headers = tracing.inject(dict(kwargs.pop("headers", None) or {}))
                response = await self.client.request(method, path, headers=headers, **kwargs)
                status = str(response.status_code)
                span.set_attribute("http.response.status_code", response.status_code)
        except httpx.TimeoutException as exc:
            raise RetryLater(None, f"{self.vendor} timeout: {type(exc).__name__}", cause=_transport_cause(exc)) from exc
        except httpx.TransportError as exc:
            raise RetryLater(
                None, f"{self.vendor} unreachable: {type(exc).__name__}", cause=_transport_cause(exc)
            ) from exc
        finally:
            elapsed = time.perf_counter() - started
            VENDOR_REQUESTS.labels(self.vendor, endpoint, status).inc()
            VENDOR_DURATION.labels(self.vendor, endpoint).observe(elapsed)
            vendor_call(self.vendor, method, path, status, elapsed)
            log.info(
                "vendor_call",
                vendor=self.vendor,
                method=method,
                endpoint=endpoint,
                status=status,
                duration_ms=round(elapsed * 1000, 1),
            )
        code = response.status_code
        if code in ok or code in passthrough:
            return response
        url = redact_url(str(response.request.url))
        if code == 429:
            raise RetryLater(
                retry_delay(response.headers), f"{self.vendor} 429 at {endpoint}", status=429, cause=Cause.THROTTLED
            )
        if code >= 500 or code in RETRYABLE_STATUS:
            raise RetryLater(None, f"{self.vendor} {code} at {endpoint}", status=code, cause=status_cause(code))
        body = parse_body(response)
        raise Permanent(
            f"{self.vendor} {code} at {endpoint}: {_short(body)}", status=code, cause=status_cause(code)
        ) from VendorError(self.vendor, code, body, url)


# transport failures raised before a byte of the request left: the vendor cannot have acted
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _transport_cause(exc: httpx.TransportError) -> Cause:
    """No connection made (``NOT_SENT``), no answer in time (``TIMEOUT``), or the connection
    lost once the request may have left (``CONNECTION_LOST``)."""
    if isinstance(exc, _NOT_SENT):
        return Cause.NOT_SENT
    if isinstance(exc, httpx.TimeoutException):
        return Cause.TIMEOUT
    return Cause.CONNECTION_LOST


def _short(body: Any) -> str:
    text = body if isinstance(body, str) else str(body.get("message", body)) if isinstance(body, dict) else str(body)
    return text[:200]
