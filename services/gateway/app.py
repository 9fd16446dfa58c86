"""The Verity API gateway (spec/outbound.md §3.1, §3.2; ARCHITECTURE.md §5).

``POST /api/verity`` proxies one request described in JSON to Verity; ``GET /api/verity``
returns the endpoint catalog; ``GET /health`` reports dependencies (which ones failed and why
only to a caller with the API key). Callers authenticate with
``Authorization: Bearer <DF_MIDDLEWARE_API_KEY>`` (any of its comma-separated values); an
end-user Clerk token travels inside the request's ``headers.Authorization`` and is verified
before it is passed on. Rate limits per verified key, else per client address, and failed key
attempts per address (limits.py); 100 kB bodies; CORS by ``CORS_ALLOWED_ORIGINS`` (any origin
in development); Verity's redirects followed on its own origin only (redirects.py).

Sends (``/apisms`` → send-message, services/clients/verity.py ``SENDING_ENDPOINTS``) pass the
opt-out gate first: a recipient who opted out is ``403 recipient_opted_out`` with a
``sync_log`` row and no request to Verity. 403, not 422: the request is well formed and
retrying or rewording it will not help; it is refused because the person withdrew consent
(the M-2 path reports the same refusal to GHL as ``opted_out``). The registry is read
through the app's one small pool, shared with ``/health``; without ``DATABASE_URL`` or when
it cannot be read, sends are ``503 OPTOUT_REGISTRY_UNAVAILABLE`` (fail closed).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.routing import Match

from contracts.json_body import BodyError, parse_body
from services.clients.clerk import ClerkVerifier, TokenInvalid
from services.clients.verity import (
    DEFAULT_BASE_URL,
    ENDPOINT_PATTERN,
    METHODS,
    Catalog,
    OptOutGate,
    ProxyError,
    VerityProxy,
    check_endpoint,
    target,
)
from services.gateway.health import DependencyProbe
from services.gateway.limits import (
    RateLimiter,
    bearer,
    client_address,
    key_id,
    reset_in,
    trusted_networks,
)
from services.gateway.redirects import SameOriginRedirects
from services.infra import tracing
from services.infra.db.session import create_engine
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)

# ``route`` is the matched route's template, or "other": never the raw path (a caller could
# otherwise create a series per path it makes up)
REQUESTS = Counter("dfm_gateway_requests_total", "Gateway requests", ["route", "status"])
DURATION = Histogram(
    "dfm_gateway_request_duration_seconds",
    "Gateway request time",
    ["route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MAX_BODY_BYTES = 100 * 1024
MAX_BODY_DEPTH = 32  # a proxy request is {endpoint, method, params, query, body, headers}
UNLIMITED = ("/health", "/metrics")  # spec §3.1: health is exempt (and cheap: health.py)
DESCRIPTION = (
    "POST a JSON object {endpoint, method, params?, query?, body?, headers?} to proxy "
    "one request to the Verity API; GET returns this catalog."
)


# --- OpenAPI documentation (the handlers parse bodies themselves, for the spec's error codes) --
class ProxyRequest(BaseModel):
    """One request to proxy to Verity."""

    endpoint: str = Field(pattern=ENDPOINT_PATTERN, description="a path under /api, e.g. /api/leads/{id}")
    method: Literal[METHODS]  # type: ignore[valid-type]
    params: dict[str, str] | None = Field(default=None, description="values of the path's {name} parts")
    query: dict[str, Any] | None = None
    body: Any = None
    headers: dict[str, str] | None = Field(
        default=None,
        description="Authorization: Bearer <Clerk token>, and the forwarded headers GATEWAY_FORWARD_HEADERS names",
    )


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
TOO_MANY = {
    "description": "rate limit (RATE_LIMIT_MAX per 15 minutes per key or client address; "
    "GATEWAY_AUTH_FAILURE_MAX failed key attempts per address)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
# The key is checked by the limits middleware, before any route (the limits are per verified
# key); the routes that need it depend on this scheme so the OpenAPI document declares it there.
API_KEY = HTTPBearer(
    scheme_name="GatewayKey", auto_error=False, description="DF_MIDDLEWARE_API_KEY (any of its comma-separated values)"
)
PROXY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ProxyRequest.model_json_schema(ref_template="#/components/schemas/{model}")}
        },
    },
}


def _fail(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": {"message": message, "code": code}}, status_code=status, headers=headers
    )


# one connection: the health probe's and the opt-out lookups' (deploy/README.md connection budget)
POOL_SIZE = 1


def create_app(settings: Settings) -> FastAPI:
    catalog = Catalog(settings.verity_catalog_path)
    # creating the engine connects nothing; the lifespan disposes of it
    engine = create_engine(settings, pool_size=POOL_SIZE) if settings.database_url else None
    proxy = VerityProxy(
        settings,
        client=httpx.AsyncClient(
            timeout=httpx.Timeout(settings.verity_proxy_timeout_s, connect=5.0),
            follow_redirects=False,
            transport=SameOriginRedirects(settings.verity_base_url or DEFAULT_BASE_URL),
        ),
        gate=OptOutGate(settings, engine, sender="gateway"),
    )
    verifier = ClerkVerifier(settings)
    limiter = RateLimiter(settings.rate_limit_max)
    failures = RateLimiter(settings.gateway_auth_failure_max)
    trusted = trusted_networks(settings.gateway_trusted_proxies)
    probe = DependencyProbe(settings, engine)
    forward = {h.lower() for h in settings.gateway_forward_headers}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.df_middleware_api_key:
            log.error("gateway_api_key_unset_rejects_everything")
        catalog.load()
        probe.start()
        try:
            yield
        finally:
            await proxy.aclose()
            await probe.aclose()
            if engine is not None:
                await engine.dispose()

    app = FastAPI(title="DF-Middleware Verity gateway", version="0.1.0", lifespan=lifespan)
    origins = ["*"] if settings.node_env == "development" else settings.cors_allowed_origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=origins != ["*"],
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
    )

    def route_of(request: Request) -> str:
        """The template of the route the request matches, else "other" (a bounded label set)."""
        for route in app.router.routes:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", "other"))
        return "other"

    def caller(request: Request) -> tuple[str, str | None]:
        """(the client's address, the id of the verified key or None)."""
        address = client_address(
            request.client.host if request.client else None, request.headers.getlist("x-forwarded-for"), trusted
        )
        return address, key_id(request.headers.get("authorization"), settings.df_middleware_api_key)

    def key_refused(request: Request, address: str, verified: str | None) -> bool:
        """Brute-force throttle. Past ``GATEWAY_AUTH_FAILURE_MAX`` failures of this address, any
        key it sends is refused, the right one too: a 200 among the 429s would tell a
        guesser which guess was right. Otherwise a wrong key counts one failure."""
        if "authorization" not in request.headers:
            return False
        if failures.exhausted(address):
            return True
        if verified is None:
            failures.hit(address)
        return False

    @app.middleware("http")
    async def limits(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        route = route_of(request)
        started = time.perf_counter()
        address, verified = caller(request)
        refused = key_refused(request, address, verified)
        request.state.key_id = None if refused else verified
        if route in UNLIMITED:  # a refused key on /health gets the public answer, never a 429
            return await call_next(request)
        if refused:
            REQUESTS.labels(route, "429").inc()
            headers = failures.headers(key=address)
            return PlainTextResponse(
                "Too many failed API key attempts, please try again later.",
                status_code=429,
                headers={**headers, "Retry-After": str(reset_in())},
            )
        bucket = f"key:{verified}" if request.state.key_id else f"ip:{address}"
        allowed, headers = limiter.hit(bucket)
        if not allowed:
            REQUESTS.labels(route, "429").inc()
            return PlainTextResponse(
                "Too many requests, please try again later.",
                status_code=429,
                headers={**headers, "Retry-After": headers["RateLimit-Reset"]},
            )
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
        """The middleware verified the key (and the address is not locked out)."""
        return getattr(request.state, "key_id", None) is not None

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """Public: each check's status. With the API key: why (the messages) too."""
        checks: dict[str, Mapping[str, str | None]] = {
            **await probe.checks(),
            "externalApi_ghl": _configured(settings.ghl_api_key, "GHL_API_KEY"),
            "externalApi_aloware": _configured(settings.aloware_api_token, "ALOWARE_API_TOKEN"),
            "externalApi_verity": _configured(settings.verity_base_url, "VERITY_BASE_URL"),
        }
        checks["catalog"] = (
            {"status": "ok"} if catalog.load() is not None else {"status": "warning", "message": catalog.error}
        )
        degraded = any(c["status"] == "error" for c in checks.values())
        if not authorised(request):
            checks = {name: {"status": check["status"]} for name, check in checks.items()}
        return JSONResponse(
            {
                "status": "degraded" if degraded else "ok",
                "timestamp": datetime.now(UTC).isoformat(),
                "service": "df-middleware",
                "checks": checks,
            },
            status_code=503 if degraded else 200,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/api/verity",
        response_model=Envelope,
        dependencies=[Security(API_KEY)],
        responses={401: ERROR_ANSWER, 429: TOO_MANY, 503: ERROR_ANSWER},
    )
    async def get_catalog(request: Request) -> JSONResponse:
        if not authorised(request):
            return _fail(401, "UNAUTHORIZED", "missing or invalid API key")
        data = catalog.load()
        if data is None:
            return _fail(503, "CATALOG_UNAVAILABLE", "the Verity API catalog is unavailable")
        return JSONResponse(
            {
                "success": True,
                "data": {
                    "catalog": data,
                    "gateway": {"endpoint": "/api/verity", "method": "POST", "description": DESCRIPTION},
                },
            }
        )

    @app.post(
        "/api/verity",
        response_model=Envelope,
        openapi_extra=PROXY_DOC,
        dependencies=[Security(API_KEY)],
        responses={"4XX": ERROR_ANSWER, 429: TOO_MANY, "5XX": ERROR_ANSWER},
    )
    async def post_proxy(request: Request) -> Response:
        if not authorised(request):
            return _fail(401, "UNAUTHORIZED", "missing or invalid API key")
        # read with the cap whatever Content-Length said (a chunked body has none), and parse
        # with the ingress's rules (contracts.json_body): deep nesting, NaN, lone surrogates
        # and non-UTF-8 are a 400 with the reason, never a 500 further down
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                return _fail(413, "PAYLOAD_TOO_LARGE", f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            spec = parse_body(bytes(raw) or b"{}", max_depth=MAX_BODY_DEPTH, replace_nul=False)
        except BodyError as exc:
            message = {
                "invalid_json": "body is not JSON",
                "body_must_be_a_json_object": "body must be a JSON object",
            }.get(exc.reason, exc.reason)
            return _fail(400, "INVALID_REQUEST", message)
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
        known, needs_admin = (
            catalog.entry_for(endpoint, resolved, method) if catalog.load() is not None else (None, False)
        )
        if known is None and catalog.load() is not None:
            log.warning("gateway_endpoint_not_in_catalog", endpoint=endpoint, method=method)
            if settings.gateway_catalog_enforce:
                return _fail(404, "NOT_IN_CATALOG", f"{method} {endpoint} is not in the Verity API catalog")
        given = {str(k).lower(): str(v) for k, v in (spec.get("headers") or {}).items()}
        token = None
        if "authorization" in given:
            token = bearer(given["authorization"])
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
                result = await proxy.call(
                    endpoint,
                    method,
                    params=spec.get("params"),
                    query=spec.get("query"),
                    body=spec.get("body"),
                    headers=extra,
                    token=token,
                    metric_endpoint=known.path if known else "uncatalogued",
                )
        except ProxyError as exc:
            return _fail(exc.status, exc.code, exc.message)
        headers = dict(result.headers)
        if known is None:
            headers["X-DFM-Catalog"] = "unknown-endpoint"
        return JSONResponse(result.envelope, status_code=result.status, headers=headers)

    return app


def _configured(value: Any, name: str) -> dict[str, str]:
    return {"status": "ok"} if value else {"status": "warning", "message": f"{name} is not set"}
