"""The Verity API gateway (spec/outbound.md §3.1, §3.2; ARCHITECTURE.md §5).

``POST /api/verity`` proxies one request described in JSON to Verity; ``GET /api/verity``
returns the endpoint catalog; ``GET /health`` reports dependencies. Callers authenticate
with ``Authorization: Bearer <DF_MIDDLEWARE_API_KEY>`` (any of its comma-separated values);
an end-user Clerk token travels inside the request's ``headers.Authorization`` and is
verified before it is passed on. Per-client rate limit (the API key, else the address),
100 kB bodies, CORS by ``CORS_ALLOWED_ORIGINS`` (any origin in development).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from services.clients.clerk import ClerkVerifier, TokenInvalid
from services.clients.verity import (
    ENDPOINT_PATTERN,
    METHODS,
    Catalog,
    ProxyError,
    VerityProxy,
    check_endpoint,
    target,
)
from services.common import tracing
from services.common.db.session import sync_url
from services.common.logging import get_logger
from services.common.settings import Settings
from services.common.signing import secret_matches

log = get_logger(__name__)

REQUESTS = Counter("dfm_gateway_requests_total", "Gateway requests", ["route", "status"])
DURATION = Histogram("dfm_gateway_request_duration_seconds", "Gateway request time", ["route"],
                     buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
MAX_BODY_BYTES = 100 * 1024
WINDOW_S = 15 * 60
DESCRIPTION = ("POST a JSON object {endpoint, method, params?, query?, body?, headers?} to proxy "
               "one request to the Verity API; GET returns this catalog.")


# --- OpenAPI documentation (the handlers parse bodies themselves, for the spec's error codes) --
class ProxyRequest(BaseModel):
    """One request to proxy to Verity."""

    endpoint: str = Field(pattern=ENDPOINT_PATTERN, description="a path under /api, e.g. /api/leads/{id}")
    method: Literal[METHODS]  # type: ignore[valid-type]
    params: dict[str, str] | None = Field(default=None, description="values of the path's {name} parts")
    query: dict[str, Any] | None = None
    body: Any = None
    headers: dict[str, str] | None = Field(default=None, description="Authorization: Bearer <Clerk token>, "
                                           "and the forwarded headers GATEWAY_FORWARD_HEADERS names")


class GatewayError(BaseModel):
    message: str
    code: str


class Envelope(BaseModel):
    """Every JSON answer: ``data`` on success, ``error`` otherwise; ``meta`` on proxied calls."""

    success: bool
    data: Any = None
    error: GatewayError | None = None
    meta: dict[str, Any] | None = None


ERROR_ANSWER = {"model": Envelope, "description": "the gateway's error, or Verity's own status passed through"}
TOO_MANY = {"description": "rate limit (RATE_LIMIT_MAX per 15 minutes per client)",
            "content": {"text/plain": {"schema": {"type": "string"}}}}
PROXY_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": ProxyRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}},
}


def _fail(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": {"message": message, "code": code}},
                        status_code=status, headers=headers)


class RateLimiter:
    """Fixed 15-minute windows per client key, in process (spec: ``RATE_LIMIT_MAX``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, key: str) -> tuple[bool, dict[str, str]]:
        window = int(time.time() // WINDOW_S)
        start, count = self._windows.get(key, (window, 0))
        if start != window:
            start, count = window, 0
        count += 1
        self._windows[key] = (start, count)
        if len(self._windows) > 100_000:  # forget stale windows
            self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        reset = int((window + 1) * WINDOW_S - time.time())
        headers = {"RateLimit-Limit": str(self.limit),
                   "RateLimit-Remaining": str(max(0, self.limit - count)),
                   "RateLimit-Reset": str(reset)}
        return count <= self.limit, headers


def _client_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth:
        return "key:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
    return "ip:" + (request.client.host if request.client else "?")


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def create_app(settings: Settings) -> FastAPI:
    catalog = Catalog(settings.verity_catalog_path)
    proxy = VerityProxy(settings)
    verifier = ClerkVerifier(settings)
    limiter = RateLimiter(settings.rate_limit_max)
    forward = {h.lower() for h in settings.gateway_forward_headers}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.df_middleware_api_key:
            log.error("gateway_api_key_unset_rejects_everything")
        catalog.load()
        try:
            yield
        finally:
            await proxy.aclose()

    app = FastAPI(title="DF-Middleware Verity gateway", version="0.1.0", lifespan=lifespan)
    origins = ["*"] if settings.node_env == "development" else settings.cors_allowed_origins
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=origins != ["*"],
                       allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"])

    @app.middleware("http")
    async def limits(request: Request, call_next: Any) -> Response:
        route = request.url.path
        started = time.perf_counter()
        if route == "/health" or route == "/metrics":
            return await call_next(request)
        allowed, headers = limiter.hit(_client_key(request))
        if not allowed:
            REQUESTS.labels(route, "429").inc()
            return PlainTextResponse("Too many requests, please try again later.", status_code=429,
                                     headers={**headers, "Retry-After": headers["RateLimit-Reset"]})
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            REQUESTS.labels(route, "413").inc()
            return _fail(413, "PAYLOAD_TOO_LARGE", f"body larger than {MAX_BODY_BYTES} bytes", headers)
        response: Response = await call_next(request)
        response.headers.update(headers)
        REQUESTS.labels(route, str(response.status_code)).inc()
        DURATION.labels(route).observe(time.perf_counter() - started)
        return response

    def authorised(request: Request) -> bool:
        given = _bearer(request.headers.get("authorization"))
        return bool(given and settings.df_middleware_api_key
                    and secret_matches(given, settings.df_middleware_api_key))

    @app.get("/health")
    async def health() -> JSONResponse:
        checks = {"database": await _check_database(settings), "nats": await _check_nats(settings),
                  "externalApi_ghl": _configured(settings.ghl_api_key, "GHL_API_KEY"),
                  "externalApi_aloware": _configured(settings.aloware_api_token, "ALOWARE_API_TOKEN"),
                  "externalApi_verity": _configured(settings.verity_base_url, "VERITY_BASE_URL")}
        checks["catalog"] = ({"status": "ok"} if catalog.load() is not None
                             else {"status": "warning", "message": catalog.error})
        degraded = any(c["status"] == "error" for c in checks.values())
        return JSONResponse({"status": "degraded" if degraded else "ok",
                             "timestamp": datetime.now(UTC).isoformat(), "service": "df-middleware",
                             "checks": checks}, status_code=503 if degraded else 200)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/verity", response_model=Envelope,
             responses={401: ERROR_ANSWER, 429: TOO_MANY, 503: ERROR_ANSWER})
    async def get_catalog(request: Request) -> JSONResponse:
        if not authorised(request):
            return _fail(401, "UNAUTHORIZED", "missing or invalid API key")
        data = catalog.load()
        if data is None:
            return _fail(503, "CATALOG_UNAVAILABLE", "the Verity API catalog is unavailable")
        return JSONResponse({"success": True, "data": {"catalog": data, "gateway": {
            "endpoint": "/api/verity", "method": "POST", "description": DESCRIPTION}}})

    @app.post("/api/verity", response_model=Envelope, openapi_extra=PROXY_DOC,
              responses={"4XX": ERROR_ANSWER, 429: TOO_MANY, "5XX": ERROR_ANSWER})
    async def post_proxy(request: Request) -> Response:
        if not authorised(request):
            return _fail(401, "UNAUTHORIZED", "missing or invalid API key")
        try:
            spec = json.loads(await request.body() or b"{}")
        except ValueError:
            return _fail(400, "INVALID_REQUEST", "body is not JSON")
        if not isinstance(spec, dict):
            return _fail(400, "INVALID_REQUEST", "body must be a JSON object")
        endpoint, method = spec.get("endpoint"), spec.get("method")
        try:
            check_endpoint(endpoint, method)
            assert isinstance(endpoint, str) and isinstance(method, str)  # check_endpoint saw to it
            for name in ("params", "query", "headers"):
                if spec.get(name) is not None and not isinstance(spec[name], dict):
                    raise ProxyError(400, "INVALID_REQUEST", f"{name} must be an object")
            # what Verity runs is the resolved path, so that is what the catalog is asked about
            resolved = target(endpoint, spec.get("params"))
        except ProxyError as exc:
            return _fail(exc.status, exc.code, exc.message)
        known, needs_admin = catalog.entry_for(endpoint, resolved, method) if catalog.load() is not None \
            else (None, False)
        if known is None and catalog.load() is not None:
            log.warning("gateway_endpoint_not_in_catalog", endpoint=endpoint, method=method)
            if settings.gateway_catalog_enforce:
                return _fail(404, "NOT_IN_CATALOG", f"{method} {endpoint} is not in the Verity API catalog")
        given = {str(k).lower(): str(v) for k, v in (spec.get("headers") or {}).items()}
        token = None
        if "authorization" in given:
            token = _bearer(given["authorization"])
            if token is None:
                return _fail(401, "INVALID_TOKEN", "headers.Authorization must be 'Bearer <token>'")
            try:
                user = await verifier.verify(token)
            except TokenInvalid as exc:
                return _fail(401, "INVALID_TOKEN", str(exc))
            if needs_admin and not user.is_admin:
                return _fail(403, "FORBIDDEN", "this endpoint needs an admin user")
        extra = {k: v for k, v in given.items() if k in forward and k != "authorization"}
        try:
            with tracing.span("gateway proxy", kind=SpanKind.SERVER, parent=request.headers):
                result = await proxy.call(endpoint, method, params=spec.get("params"), query=spec.get("query"),
                                          body=spec.get("body"), headers=extra, token=token,
                                          metric_endpoint=known.path if known else "uncatalogued")
        except ProxyError as exc:
            return _fail(exc.status, exc.code, exc.message)
        headers = dict(result.headers)
        if known is None:
            headers["X-DFM-Catalog"] = "unknown-endpoint"
        return JSONResponse(result.envelope, status_code=result.status, headers=headers)

    return app


def _configured(value: Any, name: str) -> dict[str, str]:
    return {"status": "ok"} if value else {"status": "warning", "message": f"{name} is not set"}


async def _check_database(settings: Settings) -> dict[str, str]:
    if not settings.database_url:
        return {"status": "warning", "message": "DATABASE_URL is not set"}
    try:
        conn = await asyncio.wait_for(asyncpg.connect(sync_url(settings.database_url)), 2)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
    except Exception as exc:  # any failure is reported, never raised
        return {"status": "error", "message": f"database unreachable: {type(exc).__name__}"}
    return {"status": "ok"}


async def _check_nats(settings: Settings) -> dict[str, str]:
    if not settings.nats_url:
        return {"status": "warning", "message": "NATS_URL is not set"}
    import nats

    try:
        nc = await nats.connect(servers=settings.nats_url, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
        await nc.close()
    except Exception as exc:  # reported, never raised
        return {"status": "error", "message": f"NATS unreachable: {type(exc).__name__}"}
    return {"status": "ok"}
