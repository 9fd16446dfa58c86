"""The ingress HTTP app: the only door for webhook senders (ARCHITECTURE.md §5).

Per request: read the raw body (capped) → authenticate → parse → classify → publish with
the dedupe key as ``Nats-Msg-Id`` → answer. Nothing here calls a vendor (C8) and no body
ever produces a 5xx (C9).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.routing import Route

from contracts.envelope import AuthInfo
from contracts.json_body import BodyError, parse_body
from services.infra import tracing
from services.infra.db.session import create_engine
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.ingress import metrics
from services.ingress.admin import (
    Throttled,
    Unauthorized,
    admin_router,
    throttled_response,
    unauthorized_response,
)
from services.ingress.auth import (
    AuthFailure,
    GhlVerifier,
    authenticate_aloware,
    authenticate_ghl,
    authenticate_verity,
    check_ghl_freshness,
    configured_sources,
)
from services.ingress.classify import (
    Classification,
    Classified,
    Ignored,
    Rejected,
    classify_aloware,
    classify_broadcast,
    classify_ghl,
    classify_provider,
    classify_texting,
)
from services.ingress.limits import SlidingWindow
from services.ingress.oauth_route import oauth_router
from services.ingress.publisher import Accepted, Duplicate, EventPublisher, TooLarge

log = get_logger(__name__)

WEBHOOK_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "responses": {
        "200": {"description": "accepted, duplicate or ignored"},
        "400": {"description": "invalid JSON"},
        "401": {"description": "bad credentials"},
        "408": {"description": "the body did not arrive within WEBHOOK_BODY_READ_TIMEOUT_S"},
        "413": {"description": "body too large"},
        "422": {"description": "missing required fields"},
        "429": {"description": "not durable now (GHL); retry after Retry-After"},
        "503": {"description": "not durable now; retry after Retry-After"},
    },
}
RETRY_AFTER_S = "60"
READINESS_CACHE_S = 1.0


class BodyTooLarge(Exception):
    """The request body exceeds ``WEBHOOK_MAX_BODY_BYTES``."""


class BodyTooSlow(Exception):
    """The request body did not arrive within ``WEBHOOK_BODY_READ_TIMEOUT_S``."""


async def read_body(request: Request, limit: int, deadline_s: float) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading it all (C2), and a
    body that takes longer than ``deadline_s`` in all: it is buffered before authentication
    (signatures cover it), so without a deadline anyone could hold a worker and up to
    ``limit`` bytes of memory per connection for ever by sending a byte now and then
    (security-audit F10; uvicorn's timeouts cover idle keep-alive connections only)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTooSlow from None
    return b"".join(chunks)


def _reply(http_status: int, metric: str, fields: dict[str, Any]) -> tuple[str, JSONResponse]:
    """(metric outcome label, response); 429/503 carry ``Retry-After``."""
    headers = {"Retry-After": RETRY_AFTER_S} if http_status in (429, 503) else None
    return metric, JSONResponse(fields, status_code=http_status, headers=headers)


def _rejected(http_status: int, metric: str, error: str) -> tuple[str, JSONResponse]:
    return _reply(http_status, metric, {"success": False, "status": "rejected", "error": error})


UNAVAILABLE = {"success": False, "status": "unavailable", "error": "try_again_later"}


class Readiness:
    """The expensive readiness probes (a query, a JetStream API call), run by at most one
    caller at a time and reused for ``READINESS_CACHE_S``, on an engine of their own with one
    connection: the public probe used to borrow from the pool the outbox needs exactly when
    NATS is down, so a flood of health requests turned webhooks into 429/503 (security-audit
    F10), and each request cost a database round trip."""

    def __init__(self, publisher: EventPublisher, engine: Any) -> None:
        self.publisher = publisher
        self.engine = engine
        self._cached: tuple[float, dict[str, str]] | None = None
        self._running: asyncio.Task[dict[str, str]] | None = None

    async def checks(self) -> dict[str, str]:
        """``database`` and ``stream``, at most ``READINESS_CACHE_S`` old."""
        if self._cached is not None and time.monotonic() - self._cached[0] < READINESS_CACHE_S:
            return self._cached[1]
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._probe())
        return await asyncio.shield(self._running)  # one caller giving up does not cancel the others'

    async def _probe(self) -> dict[str, str]:
        metrics.READINESS_PROBES.inc()
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure of the probe is a failed check, reported  # noqa: BLE001
            checks["database"] = f"error: {type(exc).__name__}"
        checks["stream"] = "ok" if await self.publisher.stream_present() else "error: missing"
        self._cached = (time.monotonic(), checks)
        return checks


class Ingress:
    """Request handling with its dependencies made explicit (no module globals)."""

    def __init__(
        self, settings: Settings, publisher: EventPublisher, engine: Any, readiness: Readiness | None = None
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.engine = engine
        self.readiness = readiness or Readiness(publisher, engine)
        self.ghl_verifier = GhlVerifier.from_settings(settings)
        self.draining = False

    async def handle(
        self,
        request: Request,
        source: str,
        authenticate: Callable[[Request, bytes], AuthInfo],
        classify: Callable[[dict[str, Any]], Classification],
    ) -> Response:
        """Run one webhook through the pipeline and record metrics for it."""
        started = time.perf_counter()
        # a trace per webhook, continuing the sender's when it sent a traceparent; the
        # publisher copies its context into the NATS headers
        with tracing.span(f"webhook {source}", kind=SpanKind.SERVER, parent=request.headers) as span:
            try:
                outcome, response = await self._pipeline(request, source, authenticate, classify)
            except Exception:  # a bug must not become a 500: the sender retries, dedupe holds
                log.exception("webhook_unexpected_error", source=source)
                outcome, response = _reply(
                    429 if source in ("ghl", "ghl_provider") else 503, "unavailable", UNAVAILABLE
                )
            span.set_attribute("dfm.outcome", outcome)
            span.set_attribute("http.response.status_code", response.status_code)
        metrics.REQUESTS.labels(source, outcome).inc()
        metrics.REQUEST_DURATION.labels(source, outcome).observe(time.perf_counter() - started)
        return response

    async def _pipeline(
        self,
        request: Request,
        source: str,
        authenticate: Callable[[Request, bytes], AuthInfo],
        classify: Callable[[dict[str, Any]], Classification],
    ) -> tuple[str, JSONResponse]:
        try:
            body = await read_body(
                request, self.settings.webhook_max_body_bytes, self.settings.webhook_body_read_timeout_s
            )
        except BodyTooLarge:
            return _rejected(413, "too_large", "body_too_large")
        except BodyTooSlow:
            return _rejected(408, "too_slow", "body_read_timeout")
        try:
            auth = authenticate(request, body)
        except AuthFailure as failure:
            metrics.AUTH_FAILURES.labels(source, failure.reason).inc()
            if not (source == "ghl" and self.settings.ghl_webhook_verify_mode == "log_only"):
                log.info("webhook_unauthorized", source=source, reason=failure.reason)
                return _rejected(401, "unauthorized", failure.reason)
            auth = AuthInfo(method="insecure", verified=False)
        try:
            payload = parse_body(body, max_depth=self.settings.webhook_max_json_depth)
        except BodyError as exc:
            return _rejected(400, "invalid", exc.reason)
        if source in ("ghl", "ghl_provider"):
            try:
                check_ghl_freshness(payload, auth, self.settings.ghl_webhook_max_age_s)
            except AuthFailure as failure:
                metrics.AUTH_FAILURES.labels(source, failure.reason).inc()
                return _rejected(401, "unauthorized", failure.reason)
        result = classify(payload)
        if isinstance(result, Rejected):
            return _rejected(422, "invalid", result.error)
        if isinstance(result, Ignored):
            outcome = "ping" if result.reason == "test_ping" else "filtered"
            message = "Test ping received" if outcome == "ping" else None
            fields: dict[str, Any] = {"success": True, "status": "ignored", "reason": result.reason}
            if message:
                fields["message"] = message
            else:
                fields["ignored"] = True
            return _reply(200, outcome, fields)
        signature = request.headers.get("x-ghl-signature") if source == "ghl" else None
        return await self._publish(source, result, auth, payload, body, signature)

    async def _publish(
        self,
        source: str,
        result: Classified,
        auth: AuthInfo,
        payload: dict[str, Any],
        body: bytes,
        signature: str | None = None,
    ) -> tuple[str, JSONResponse]:
        event = result.envelope(auth, payload, raw=body if source.startswith("ghl") else None, signature=signature)
        event_id = event.event_id
        trace.get_current_span().set_attribute("dfm.event_id", str(event_id))
        published = await self.publisher.publish(event)
        bound = {
            "event_id": str(event_id),
            "correlation_id": str(event_id),
            "source": source,
            "canonical_type": result.canonical_type,
            "dedupe_key": result.dedupe_key,
        }
        if isinstance(published, Accepted):
            log.info("webhook_accepted", outcome="accepted", stream_seq=published.seq, **bound)
            fields: dict[str, Any] = {
                "success": True,
                "status": "accepted",
                "id": str(event_id),
                "message": "Webhook received",
            }
            if result.outcome_hint:
                fields["outcome"], _, fields["reason"] = result.outcome_hint.partition(":")
            return _reply(200, "accepted", fields)
        if isinstance(published, Duplicate):
            log.info("webhook_duplicate", outcome="duplicate", **bound)
            return _reply(
                200,
                "duplicate",
                {
                    "success": True,
                    "status": "duplicate",
                    "id": str(published.first_id) if published.first_id else None,
                    "message": "Duplicate event ignored",
                },
            )
        if isinstance(published, TooLarge):
            log.info("webhook_too_large_for_stream", size=published.size, limit=published.limit, **bound)
            return _rejected(
                413,
                "too_large",
                f"event_too_large: {published.size} bytes as a stream message, the limit is {published.limit}",
            )
        log.error("webhook_unavailable", outcome="unavailable", reason=published.reason, **bound)
        status = 429 if source in ("ghl", "ghl_provider") else 503
        return _reply(status, "unavailable", UNAVAILABLE)

    # --- per-source authentication and classification ------------------------------------
    def auth_ghl(self, request: Request, body: bytes) -> AuthInfo:
        return authenticate_ghl(self.settings, self.ghl_verifier, request.headers, request.query_params, body)

    def auth_provider(self, request: Request, body: bytes) -> AuthInfo:
        return authenticate_ghl(
            self.settings,
            self.ghl_verifier,
            request.headers,
            request.query_params,
            body,
            provider=True,
        )

    def auth_aloware(self, request: Request, body: bytes) -> AuthInfo:
        return authenticate_aloware(self.settings, request.headers)

    def auth_texting(self, request: Request, body: bytes) -> AuthInfo:
        return authenticate_verity(
            self.settings,
            request.headers,
            body,
            source="texting",
            signature_headers=("x-texting-signature", "x-signature"),
            plain_header="x-texting-secret",
            accept_plain=bool(self.settings.texting_accept_plain_secret),
        )

    def auth_broadcast(self, request: Request, body: bytes) -> AuthInfo:
        return authenticate_verity(
            self.settings,
            request.headers,
            body,
            source="broadcast",
            signature_headers=("x-broadcast-signature", "x-signature"),
            plain_header="x-df-broadcast-secret",
            accept_plain=bool(self.settings.broadcast_accept_plain_secret),
        )

    def classify_ghl(self, payload: dict[str, Any]) -> Classification:
        return classify_ghl(payload, expected_location_id=self.settings.ghl_location_id)

    def classify_provider(self, payload: dict[str, Any]) -> Classification:
        return classify_provider(payload, region=self.settings.default_phone_region)

    def classify_aloware(self, payload: dict[str, Any]) -> Classification:
        return classify_aloware(payload, allow_list=self.settings.aloware_webhook_allowed_events)

    def classify_broadcast(self, payload: dict[str, Any]) -> Classification:
        return classify_broadcast(payload, received_at=datetime.now(UTC))

    # --- health --------------------------------------------------------------------------
    def security(self) -> dict[str, Any]:
        """What authentication runs with, for operators (security-audit F15): a switch that
        opens a door must be visible where readiness is looked at."""
        s = self.settings
        plain = {"texting": s.texting_accept_plain_secret, "broadcast": s.broadcast_accept_plain_secret}
        return {
            "mode": s.node_env,
            "verify_mode": s.ghl_webhook_verify_mode,
            "insecure_sources": list(s.dfm_insecure_allow_unsigned),
            "insecure_overrides": sorted({name.upper() for name in s.dfm_allow_insecure_in_production}),
            "plain_secret_sources": [source for source, on in plain.items() if on and s.verity_webhook_secret],
            "ghl_keys": {"ed25519": len(self.ghl_verifier.ed25519_keys), "rsa": len(self.ghl_verifier.rsa_keys)},
        }

    async def health(self) -> tuple[int, dict[str, Any]]:
        """Readiness: PostgreSQL, NATS, stream, configured sources (spec §7.1). The probes
        are ``Readiness``'s (cached); NATS's connection state and draining are read live."""
        probed = await self.readiness.checks()
        checks: dict[str, Any] = {"database": probed["database"]}
        checks["nats"] = "ok" if self.publisher.nats_connected else "error: disconnected"
        checks["stream"] = probed["stream"] if self.publisher.nats_connected else "error: missing"
        for source, ok in configured_sources(self.settings).items():
            checks[f"config_{source}"] = "configured" if ok else "unconfigured"
        # NATS down is survivable (outbox), PostgreSQL down is survivable (stream); both not.
        infra_ok = checks["database"] == "ok" or checks["nats"] == "ok"
        ready = infra_ok and checks["stream"] == "ok" and not self.draining
        if self.draining:
            checks["draining"] = True
        body = {
            "status": "ok" if ready else "degraded",
            "timestamp": datetime.now(UTC).isoformat(),
            "service": "df-middleware-ingress",
            "checks": checks,
            **self.security(),
        }
        return (200 if ready else 503), body


def create_app(settings: Settings) -> FastAPI:
    """Build the ingress app; NATS and PostgreSQL connections open in the lifespan."""
    settings.refuse_insecure_in_production()  # load_settings did; Settings built directly too
    engine = create_engine(settings, pool_size=min(settings.db_max_connections, 5))
    probe_engine = create_engine(settings, pool_size=1)  # readiness only: never the outbox's pool
    publisher = EventPublisher(settings, engine)
    ingress = Ingress(settings, publisher, engine, Readiness(publisher, probe_engine))
    production = settings.node_env == "production"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info(
            "ingress_mode",
            node_env=settings.node_env,
            verify_mode=settings.ghl_webhook_verify_mode,
            docs=bool(settings.ingress_docs_enabled),
        )
        for source, ok in configured_sources(settings).items():
            if not ok and source not in settings.dfm_insecure_allow_unsigned:
                log.error("webhook_source_unconfigured_fails_closed", source=source)
        for source in settings.dfm_insecure_allow_unsigned:
            log.warning("webhook_source_accepts_unsigned_requests", source=source)
        if settings.ghl_webhook_verify_mode == "log_only":
            log.warning("ghl_webhook_signatures_not_enforced", verify_mode="log_only")
        await publisher.start()
        try:
            yield
        finally:
            await publisher.close()
            await engine.dispose()
            await probe_engine.dispose()

    docs = bool(settings.ingress_docs_enabled)  # off in production unless INGRESS_DOCS_ENABLED
    app = FastAPI(
        title="DF-Middleware ingress",
        version="0.1.0",
        lifespan=lifespan,
        description="Webhook ingress: authenticated, durable before 2xx, deduplicated.",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.ingress = ingress
    admin_failures = SlidingWindow(settings.admin_rate_limit_max)
    app.include_router(admin_router(settings, engine, publisher, admin_failures))
    app.include_router(oauth_router(settings, engine, admin_failures))
    app.add_exception_handler(Unauthorized, unauthorized_response)
    app.add_exception_handler(Throttled, throttled_response)

    documented: dict[str, str] = {}
    fast_routes: dict[str, Callable[[Request], Awaitable[Response]]] = {}

    def webhook(path: str, source: str, auth: Any, classify: Any, *, alias: str | None = None) -> None:
        async def endpoint(request: Request) -> Response:
            return await ingress.handle(request, source, auth, classify)

        # Served by WebhookFastPath below; the route stays for other methods (405) and tests.
        app.router.routes.append(Route(path, endpoint, methods=["POST"]))
        fast_routes[path] = endpoint
        documented[path] = source

    webhook("/api/webhooks/ghl", "ghl", ingress.auth_ghl, ingress.classify_ghl)
    webhook(
        "/api/webhooks/ghl/provider-delivery",
        "ghl_provider",
        ingress.auth_provider,
        ingress.classify_provider,
    )
    webhook("/api/webhooks/aloware", "aloware", ingress.auth_aloware, ingress.classify_aloware)
    webhook(
        "/api/integrations/aloware/webhook",
        "aloware",
        ingress.auth_aloware,
        ingress.classify_aloware,
        alias="w4",
    )
    webhook("/api/webhooks/texting", "texting", ingress.auth_texting, classify_texting)
    webhook("/api/webhooks/broadcast", "broadcast", ingress.auth_broadcast, ingress.classify_broadcast)

    @app.get("/api/health", summary="readiness with dependency checks")
    async def health() -> JSONResponse:
        status, body = await ingress.health()
        return JSONResponse(body, status_code=status)

    @app.get("/api/health/live", summary="liveness, no dependency calls")
    async def live() -> JSONResponse:
        return JSONResponse({"status": "ok", "service": "df-middleware-ingress"})

    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if not production:  # production: on METRICS_PORT only (main.run), not on the public port
        app.add_api_route("/metrics", prometheus, methods=["GET"], include_in_schema=False)
        app.add_api_route("/api/metrics", prometheus, methods=["GET"], include_in_schema=False)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path, source in documented.items():
                schema["paths"][path] = {
                    "post": {"summary": f"{source} webhook", "operationId": f"webhook_{path}", **WEBHOOK_BODY_DOC}
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.fast_routes = fast_routes
    return app


class WebhookFastPath:
    """ASGI front door: ``POST`` to a webhook path goes straight to its handler.

    The webhook handlers need no routing, middleware or dependency injection; skipping
    Starlette's stack for them saves about a third of the ingress CPU per request (measured
    with py-spy, bench/RESULTS.md). Everything else, including the lifespan, goes to the app.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes: dict[str, Callable[[Request], Awaitable[Response]]] = app.state.fast_routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_asgi(settings: Settings) -> WebhookFastPath:
    """The ingress as served: the app behind the webhook fast path."""
    return WebhookFastPath(create_app(settings))
