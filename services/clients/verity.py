"""Verity's API as the gateway and the MCP server use it (spec/outbound.md §2.4 V2/V5, §3.2):
the endpoint catalog, path rewrites and parameter substitution, the opt-out gate in front of
every send (O-5a, issue #16 item 1), and the proxy call with its response envelope, 502/504 on
transport failures and sanitised error messages.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.phone import to_e164
from services.clients.http import PROXY_LIMITS
from services.clients.paths import UnsafeSegment, segment
from services.domain import optout, store
from services.infra import tracing
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)

UPSTREAM_REQUESTS = Counter("dfm_verity_upstream_requests_total", "Calls proxied to Verity", ["endpoint", "status"])
UPSTREAM_DURATION = Histogram(
    "dfm_verity_upstream_duration_seconds",
    "Verity upstream latency",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SEND_REFUSALS = Counter("dfm_verity_sends_refused_total", "Sends the opt-out gate kept from Verity", ["sender", "code"])
DEFAULT_BASE_URL = "http://localhost:3000"
SEND_MESSAGE_PATH = "/api/integrations/df-middleware/send-message"
_PLACEHOLDER = re.compile(r"\[([^\]/]+)\]|\{([^}/]+)\}")
_PATH_RUN = re.compile(r"/[^\s\"']*")
ENDPOINT_PATTERN = r"^/api[A-Za-z0-9/_\-\[\]{}.]*$"
_ALLOWED_ENDPOINT = re.compile(ENDPOINT_PATTERN)
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


class ProxyError(Exception):
    """A request that cannot be proxied: HTTP ``status`` and ``code`` for the caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SendRefused(ProxyError):
    """The opt-out gate kept a send from Verity (nothing was sent): the recipient opted out,
    cannot be checked, or the registry cannot be read."""


# --- catalog ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """One catalog entry (a path with its methods)."""

    path: str
    methods: tuple[str, ...]
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    auth_type: str | None = None

    @property
    def path_params(self) -> dict[str, str]:
        return dict(self.parameters.get("path") or {})

    @property
    def query_params(self) -> dict[str, str]:
        return dict(self.parameters.get("query") or {})


def normalise_catalog_path(path: str) -> str:
    """``{x}`` and ``[x]`` compare equal (spec §3.1 step 5)."""
    return re.sub(r"\{([^}/]+)\}", r"[\1]", path)


class Catalog:
    """The Verity API catalog file, cached and reloaded when the file changes."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else Path.cwd().parent / "verity" / "docs" / "df-middleware" / "api-catalog.json"
        self._mtime: float | None = None
        self._data: dict[str, Any] | None = None
        self._endpoints: list[Endpoint] = []
        self.error: str | None = None

    def load(self) -> dict[str, Any] | None:
        """The catalog, or None when unavailable (``error`` says why)."""
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            self._data, self.error = None, f"catalog unreadable: {exc.strerror}"
            return None
        if self._data is not None and mtime == self._mtime:
            return self._data
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
            endpoints = [
                Endpoint(
                    path=str(e["path"]),
                    methods=tuple(str(m).upper() for m in e["methods"]),
                    description=e.get("description"),
                    parameters=dict(e.get("parameters") or {}),
                    auth_type=e.get("authType"),
                )
                for e in data["endpoints"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._data, self.error = None, f"catalog invalid: {type(exc).__name__}: {exc}"
            log.error("verity_catalog_invalid", path=str(self.path), error=self.error)
            return None
        self._data, self._endpoints, self._mtime, self.error = data, endpoints, mtime, None
        log.info("verity_catalog_loaded", path=str(self.path), endpoints=len(endpoints))
        return data

    @property
    def endpoints(self) -> list[Endpoint]:
        self.load()
        return list(self._endpoints) if self._data is not None else []

    def find(self, path: str, method: str) -> Endpoint | None:
        wanted = normalise_catalog_path(path)
        for endpoint in self.endpoints:
            if normalise_catalog_path(endpoint.path) == wanted and method in endpoint.methods:
                return endpoint
        return None

    def matching(self, resolved: str, method: str) -> list[Endpoint]:
        """Every entry for ``method`` whose template could have produced ``resolved`` (the path
        :func:`target` returns): what Verity will run is decided by that path, not by the
        template a caller wrote, so membership and ``requireAdmin`` are decided here too."""
        return [e for e in self.endpoints if method in e.methods and _template_pattern(e.path).match(resolved)]

    def entry_for(self, endpoint: str, resolved: str, method: str) -> tuple[Endpoint | None, bool]:
        """(the catalog entry of this request, whether it needs an admin user). The entry is
        the caller's own template when listed, else the most literal entry matching the
        resolved path; admin is needed when any matching entry says ``requireAdmin``."""
        matches = self.matching(resolved, method)
        named = self.find(endpoint, method)
        entry = named if named in matches else min(matches, key=_placeholders, default=None)
        return entry, any(e.auth_type == "requireAdmin" for e in matches)


def _placeholders(endpoint: Endpoint) -> int:
    return len(_PLACEHOLDER.findall(endpoint.path))


def _template_pattern(template: str) -> re.Pattern[str]:
    """A catalog template as a regex over resolved paths: rewritten like a request, each
    placeholder one non-empty segment, an optional trailing slash."""
    parts = _PLACEHOLDER.split(rewrite(template))
    # split() yields literal, name-or-None, name-or-None, literal, ...
    literals = parts[::3]
    return re.compile("^" + "[^/]+".join(re.escape(lit) for lit in literals).rstrip("/") + "/?$")


# --- paths -----------------------------------------------------------------------------------
def rewrite(path: str) -> str:
    """Collapsed prefixes of the catalog → Verity's real paths (spec §3.2)."""
    if path == "/apisms" or path.startswith("/apisms/"):
        return SEND_MESSAGE_PATH
    if path.startswith("/apicalls"):
        return "/api/calls" + path[len("/apicalls") :]
    if path.startswith("/apicomms"):
        return "/api/comms" + path[len("/apicomms") :]
    return path


def resolve(endpoint: str, params: dict[str, Any] | None) -> str:
    """Rewrite, then put URL-encoded parameter values into ``[x]``/``{x}``; an unfilled
    placeholder is a 400."""
    path = rewrite(endpoint)
    for key, value in (params or {}).items():
        encoded = quote(str(value), safe="")
        path = path.replace(f"[{key}]", encoded).replace(f"{{{key}}}", encoded)
    missing = [a or b for a, b in _PLACEHOLDER.findall(path)]
    if missing:
        raise ProxyError(400, "INVALID_REQUEST", f"missing path parameter: {', '.join(missing)}")
    return path


def _walks(path: str) -> bool:
    """A dot segment anywhere, or an empty one before the last (``//``): a path some server
    on the way would normalise into another one."""
    segments = path.split("/")[1:]
    return any(s in (".", "..") for s in segments) or "" in segments[:-1]


def target(endpoint: str, params: dict[str, Any] | None) -> str:
    """The path a request really goes to (issue #14 item 8): each parameter the template uses
    must be one segment that stays one segment (``INVALID_PARAMETER`` otherwise: ``.``,
    ``..``, empty, ``/``, control characters, or those after percent-decoding), then
    :func:`resolve` fills the template and the result must still be a normalised path
    under ``/api``."""
    rewritten = rewrite(endpoint)
    for key, value in (params or {}).items():
        name = str(key)
        if f"[{name}]" not in rewritten and f"{{{name}}}" not in rewritten:
            continue  # not used in the path: resolve() ignores it
        try:
            segment(value, f"path parameter {name[:40]}", free_text=True)
        except UnsafeSegment as exc:
            raise ProxyError(400, "INVALID_PARAMETER", exc.reason) from None
    path = resolve(endpoint, params)
    if not (path == "/api" or path.startswith("/api/")) or _walks(path):
        raise ProxyError(400, "INVALID_ENDPOINT", "endpoint must resolve to a path under /api")
    return path


def check_endpoint(endpoint: Any, method: Any) -> None:
    """Steps 2–4 of the gateway's validation (spec §3.1)."""
    if not endpoint or not method or not isinstance(endpoint, str) or not isinstance(method, str):
        raise ProxyError(400, "INVALID_REQUEST", "endpoint and method are required")
    if not endpoint.startswith("/api") or not _ALLOWED_ENDPOINT.match(endpoint) or _walks(endpoint):
        raise ProxyError(400, "INVALID_ENDPOINT", "endpoint must be a path under /api")
    if method not in METHODS:
        raise ProxyError(400, "INVALID_METHOD", f"method must be one of {', '.join(METHODS)}")


def is_send_message(endpoint: str) -> bool:
    return endpoint == "/apisms" or endpoint.startswith("/apisms/") or "send-message" in endpoint


# --- opt-out gate (spec/outbound.md O-5a, R3; issue #16 item 1) ------------------------------
@dataclass(frozen=True)
class SendingEndpoint:
    """A Verity endpoint that texts the numbers its request names.

    ``path`` is searched in the path a request is really sent to (:func:`target`'s result, or
    a redirect's target), so ``/apisms``, ``/apisms/x``, the rewritten path itself and its
    trailing-slash form (which Next.js redirects) are one endpoint. Every method counts:
    the gate must not depend on which verbs Verity happens to route today."""

    name: str
    path: re.Pattern[str]
    recipients: frozenset[str]  # field names (lower case) that hold a number or a list of them


# Field names a sending body may name a recipient with. Verity's send-message reads ``to``
# (§2.4 V1); the others cost nothing to check and keep a caller who spells the field another
# way (or a future Verity that reads it) from texting an opted-out number. ``from`` is ours.
RECIPIENT_FIELDS = frozenset(
    {
        "to",
        "recipient",
        "recipients",
        "phone",
        "phones",
        "phonenumber",
        "phone_number",
        "phonee164",
        "phone_e164",
        "number",
        "numbers",
        "tonumber",
        "to_number",
    }
)
# The one list of endpoints that text a person: add a line here when Verity's catalog gains
# one (the gateway, the MCP server and redirects all read this). Broadcasts are not here:
# their recipients are Verity's own contact lists, which no request to us names.
SENDING_ENDPOINTS: tuple[SendingEndpoint, ...] = (
    SendingEndpoint("send-message", re.compile(r"send-message", re.IGNORECASE), RECIPIENT_FIELDS),
)
MAX_RECIPIENTS = 1000
_NESTING = 3


def sending_endpoint(path: str) -> SendingEndpoint | None:
    """The sending endpoint ``path`` (a resolved path or a URL's path) reaches, if any."""
    return next((e for e in SENDING_ENDPOINTS if e.path.search(path)), None)


def recipients(endpoint: SendingEndpoint, body: Any, query: dict[str, Any] | None, region: str) -> list[str]:
    """Every number the request names, in E.164, in order and without repeats.

    A value that is named as a recipient but is not a phone number we can normalise is a
    ``400 INVALID_RECIPIENT``, and so is a request that names nobody: the registry can only
    answer for a number it can compare, and Verity may read a spelling we could not."""
    found: list[str] = []
    for value in (*_named(endpoint, body, 0), *_named(endpoint, query, 0)):
        if len(found) >= MAX_RECIPIENTS:
            raise SendRefused(400, "INVALID_RECIPIENT", f"more than {MAX_RECIPIENTS} recipients in one send")
        number = to_e164(value, region)
        if number is None:
            raise SendRefused(
                400,
                "INVALID_RECIPIENT",
                "a recipient is not a phone number the opt-out registry can be asked about; nothing was sent",
            )
        if number not in found:
            found.append(number)
    if not found:
        raise SendRefused(400, "INVALID_RECIPIENT", "the send names no recipient (to); nothing was sent")
    return found


def _named(endpoint: SendingEndpoint, value: Any, depth: int) -> Iterator[Any]:
    """The values of recipient fields in ``value`` (a JSON object), looking into lists and
    objects under those fields (``recipients: [{"phone": …}]``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).lower() in endpoint.recipients:
                yield from _values(endpoint, item, depth + 1)


def _values(endpoint: SendingEndpoint, item: Any, depth: int) -> Iterator[Any]:
    """Candidate numbers under a recipient field. Anything nested deeper than ``_NESTING``,
    and an object that names no number, is given back whole: it is no number, so the send
    is refused rather than guessed about."""
    if item is None:
        return
    if depth > _NESTING:
        yield item
    elif isinstance(item, list | tuple):
        for element in item:
            yield from _values(endpoint, element, depth + 1)
    elif isinstance(item, dict):
        inner = list(_named(endpoint, item, depth))
        yield from inner if inner else (item,)
    else:
        yield item


class OptOutGate:
    """O-5a for the proxy: a request to a :data:`SENDING_ENDPOINTS` path goes to Verity only
    when every recipient it names is known to the opt-out registry as not opted out.

    One gate in the proxy covers the gateway and the MCP server (both send through
    :class:`VerityProxy`). It asks :func:`services.domain.optout.is_opted_out`, the function
    M-2 asks, with numbers normalised by ``to_e164`` and ``DEFAULT_PHONE_REGION``, so
    ``+1 (555) 555-0103`` and ``5555550103`` are the same person. A refusal is a
    ``sync_log`` row per opted-out recipient (rule ``O-5a``, ``skipped``,
    ``recipient_opted_out``, target = the number) and a :class:`SendRefused`; it fails closed:
    without a database, or when the registry cannot be read, nothing is sent (503).
    ``sender`` names who asked (``gateway``, ``mcp``) in the log's direction."""

    def __init__(self, settings: Settings, engine: AsyncEngine | None, *, sender: str) -> None:
        self.region = settings.default_phone_region
        self.engine = engine
        self.sender = sender

    async def check(self, path: str, method: str, body: Any, query: dict[str, Any] | None) -> None:
        """Return when the request may go to Verity; raise :class:`SendRefused` otherwise."""
        endpoint = sending_endpoint(path)
        if endpoint is None:
            return
        try:
            numbers = recipients(endpoint, body, query, self.region)
        except SendRefused as exc:
            SEND_REFUSALS.labels(self.sender, exc.code).inc()
            raise
        correlation = f"O-5a-{uuid.uuid4()}"
        started = datetime.now(UTC)
        try:
            if self.engine is None:
                raise _RegistryUnreadable("DATABASE_URL is not set")
            async with self.engine.begin() as conn:
                refused = [n for n in numbers if await optout.is_opted_out(conn, n)]
                for number in refused:
                    await store.log_sync(
                        conn,
                        direction=f"{self.sender}_to_texting",
                        entity_type="message",
                        source_id=_source_id(body) or correlation,
                        status="skipped",
                        started_at=started,
                        correlation_id=correlation,
                        rule="O-5a",
                        attempt=1,
                        target_id=number,
                        message="recipient_opted_out",
                        details={
                            "endpoint": path,
                            "method": method,
                            "recipients": len(numbers),
                            "opted_out": len(refused),
                        },
                    )
        except (_RegistryUnreadable, SQLAlchemyError, OSError, TimeoutError) as exc:
            SEND_REFUSALS.labels(self.sender, "OPTOUT_REGISTRY_UNAVAILABLE").inc()
            log.error(
                "verity_send_refused_registry_unavailable",
                sender=self.sender,
                endpoint=endpoint.name,
                error=type(exc).__name__,
            )
            raise SendRefused(
                503, "OPTOUT_REGISTRY_UNAVAILABLE", "the opt-out registry cannot be read; nothing was sent"
            ) from None
        if refused:
            SEND_REFUSALS.labels(self.sender, "recipient_opted_out").inc()
            log.warning(
                "verity_send_refused_opted_out",
                sender=self.sender,
                endpoint=endpoint.name,
                recipients=len(numbers),
                opted_out=len(refused),
                correlation_id=correlation,
            )
            raise SendRefused(
                403,
                "recipient_opted_out",
                f"{len(refused)} of {len(numbers)} recipients opted out of SMS; nothing was sent",
            )


class _RegistryUnreadable(Exception):
    """No database to ask (fails closed like an unreachable one)."""


def _source_id(body: Any) -> str | None:
    """The caller's ``correlationId``, when it sent one, as the row's source id."""
    value = body.get("correlationId") if isinstance(body, dict) else None
    return value[:200] if isinstance(value, str) and value and "\x00" not in value else None


# --- proxy -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxyResult:
    """What the caller answers: the upstream status and the envelope."""

    status: int
    envelope: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.envelope.get("success"))


PASS_HEADERS = ("retry-after", "x-request-id")


def sanitise(message: str) -> str:
    """No internal paths or stack lines in production messages."""
    lines = [ln for ln in message.splitlines() if not ln.strip().startswith(("at ", "File ", "Traceback"))]
    text = _PATH_RUN.sub("[path]", " ".join(lines)).strip()
    return text or "Bad gateway"


class VerityProxy:
    """Proxies one request to Verity and builds the envelope of spec §3.2. Every request
    passes ``gate`` first (:class:`OptOutGate`); without one, sends are refused (there is no
    registry to ask) and everything else is proxied."""

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient | None = None, *, gate: OptOutGate | None = None
    ) -> None:
        self.settings = settings
        self.gate = gate or OptOutGate(settings, None, sender="proxy")
        self.base_url = (settings.verity_base_url or DEFAULT_BASE_URL).rstrip("/")
        self.production = settings.node_env == "production"
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.verity_proxy_timeout_s, connect=5.0),
            follow_redirects=False,
            limits=PROXY_LIMITS,  # the MCP server's pool: idle connections dropped at 2 s
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        endpoint: str,
        method: str,
        *,
        params: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        metric_endpoint: str | None = None,
    ) -> ProxyResult:
        path = target(endpoint, params)
        await self.gate.check(path, method, body, query)  # SendRefused: nothing goes to Verity
        url = self.base_url + path
        if query:
            url += "?" + urlencode({k: _query_value(v) for k, v in query.items()})
        send_headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            send_headers["Authorization"] = f"Bearer {token}"
        content = json.dumps(body).encode() if method in ("POST", "PUT", "PATCH") and body is not None else None
        label = normalise_catalog_path(metric_endpoint or endpoint)
        started = time.perf_counter()
        meta = {"endpoint": endpoint, "method": method}
        try:
            with tracing.span(f"verity {label}", kind=SpanKind.CLIENT, attributes={"http.request.method": method}):
                response = await self.client.request(method, url, headers=tracing.inject(send_headers), content=content)
        except httpx.InvalidURL as exc:  # e.g. a query too long for a URL: the caller's to fix
            UPSTREAM_REQUESTS.labels(label, "invalid_url").inc()
            raise ProxyError(400, "INVALID_REQUEST", f"the request cannot be sent as a URL: {exc}") from None
        except httpx.TimeoutException:
            UPSTREAM_REQUESTS.labels(label, "timeout").inc()
            return ProxyResult(
                504,
                {
                    "success": False,
                    "error": {
                        "message": f"Verity did not answer within {self.settings.verity_proxy_timeout_s:g} s",
                        "code": "UPSTREAM_TIMEOUT",
                    },
                    "meta": self._meta(meta, 504, started),
                },
            )
        except httpx.TransportError as exc:
            UPSTREAM_REQUESTS.labels(label, "unreachable").inc()
            message = f"Verity unreachable: {type(exc).__name__}"
            return ProxyResult(
                502,
                {
                    "success": False,
                    "error": {"message": sanitise(message) if self.production else message, "code": "PROXY_ERROR"},
                    "meta": self._meta(meta, 502, started),
                },
            )
        finally:
            UPSTREAM_DURATION.labels(label).observe(time.perf_counter() - started)
        UPSTREAM_REQUESTS.labels(label, str(response.status_code)).inc()
        data = _parse(response)
        passed = {k: v for k, v in response.headers.items() if k.lower() in PASS_HEADERS}
        envelope_meta = self._meta(meta, response.status_code, started)
        if response.is_success:
            return ProxyResult(response.status_code, {"success": True, "data": data, "meta": envelope_meta}, passed)
        if response.is_redirect:  # not followed (it could carry our credentials to another host)
            return ProxyResult(
                502,
                {
                    "success": False,
                    "error": {
                        "message": f"Verity answered a redirect ({response.status_code}); not followed",
                        "code": "UPSTREAM_REDIRECT",
                    },
                    "meta": self._meta(meta, 502, started),
                },
            )
        error: dict[str, Any] = {"message": self._error_message(response, data), "code": f"HTTP_{response.status_code}"}
        if not self.production:
            error["details"] = data
        return ProxyResult(response.status_code, {"success": False, "error": error, "meta": envelope_meta}, passed)

    def _error_message(self, response: httpx.Response, data: Any) -> str:
        default = f"HTTP {response.status_code}: {response.reason_phrase}"
        upstream = data.get("error") if isinstance(data, dict) else None
        if upstream is None:
            return default
        if self.production:
            return sanitise(upstream) if isinstance(upstream, str) else default
        return upstream if isinstance(upstream, str) else json.dumps(upstream)

    @staticmethod
    def _meta(meta: dict[str, Any], status: int, started: float) -> dict[str, Any]:
        return {
            **meta,
            "status": status,
            "duration": round((time.perf_counter() - started) * 1000, 1),
            "timestamp": datetime.now(UTC).isoformat(),
        }


def _parse(response: httpx.Response) -> Any:
    if "application/json" in response.headers.get("content-type", ""):
        try:
            return response.json()
        except ValueError:
            return response.text
    return response.text


def _query_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
