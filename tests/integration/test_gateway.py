"""The Verity gateway over real HTTP against the sandbox's fake Verity and Clerk
(spec/outbound.md §3.1, §3.2, §2.5)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.clients.clerk import ClerkVerifier, TokenInvalid
from services.clients.verity import ProxyError, resolve, rewrite
from services.infra.settings import Settings
from services.tooling.embedded import free_port
from tests.support.gateway import CATALOG, KEY, clerk_token, gateway_settings, proxy, stack  # noqa: F401


async def test_api_key_missing_wrong_and_rotated() -> None:
    async with stack() as (gw, _):
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "gw-key-1"}):
            for answer in (
                await gw.get("/api/verity", headers=headers),
                await proxy(gw, headers, endpoint="/api/health", method="GET"),
            ):
                assert answer.status_code == 401
                assert answer.json() == {
                    "success": False,
                    "error": {"message": "missing or invalid API key", "code": "UNAUTHORIZED"},
                }
        for key in ("gw-key-1", "gw-key-2"):
            answer = await gw.get("/api/verity", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200
            body = answer.json()["data"]
            assert len(body["catalog"]["endpoints"]) == 9 and body["gateway"]["endpoint"] == "/api/verity"


async def test_unset_api_key_rejects_everything() -> None:
    async with stack(df_middleware_api_key="") as (gw, _):
        assert (await gw.get("/api/verity", headers=KEY)).status_code == 401


async def test_path_rewrites_parameters_and_query_reach_verity() -> None:
    async with stack() as (gw, sandbox):
        token = await clerk_token(sandbox)
        auth = {"Authorization": f"Bearer {token}"}
        answer = await proxy(
            gw,
            endpoint="/apicomms/contacts/[id]",
            method="PATCH",
            params={"id": "c42"},
            body={"canText": False},
            headers=auth,
        )
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert data["data"]["path"] == "/api/comms/contacts/c42" and data["data"]["body"] == {"canText": False}
        assert data["meta"]["endpoint"] == "/apicomms/contacts/[id]" and data["meta"]["status"] == 200
        assert data["data"]["user"] == "user_sandbox_service"
        answer = await proxy(
            gw,
            endpoint="/apicalls/summarize-recent",
            method="GET",
            query={"hours": 6},
            body={"ignored": True},
            headers=auth,
        )
        assert answer.json()["data"] == {
            "method": "GET",
            "path": "/api/calls/summarize-recent",
            "query": {"hours": "6"},
            "body": None,
            "user": "user_sandbox_service",
        }
        answer = await proxy(
            gw, endpoint="/api/comms/broadcasts/{id}", method="GET", params={"id": "b 1"}, headers=auth
        )
        assert answer.json()["data"]["path"] == "/api/comms/broadcasts/b 1"  # sent encoded, decoded by Verity
        calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "verity"})).json()
        assert [c["path"] for c in calls] == [
            "/api/comms/contacts/c42",
            "/api/calls/summarize-recent",
            "/api/comms/broadcasts/b 1",
        ]


def test_rewrite_and_resolve_rules() -> None:
    assert rewrite("/apisms") == rewrite("/apisms/x") == "/api/integrations/df-middleware/send-message"
    assert rewrite("/apicalls/scripts") == "/api/calls/scripts"
    assert rewrite("/apicomms/contacts") == "/api/comms/contacts"
    assert rewrite("/api/health") == "/api/health"
    assert resolve("/apicalls/scripts/[scriptId]/test", {"scriptId": "a/b c"}) == "/api/calls/scripts/a%2Fb%20c/test"
    with pytest.raises(ProxyError) as missing:
        resolve("/api/comms/broadcasts/[id]", {})
    assert (missing.value.status, missing.value.code) == (400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ({}, "INVALID_REQUEST"),
        ({"endpoint": "/api/health"}, "INVALID_REQUEST"),
        ({"endpoint": "/etc/passwd", "method": "GET"}, "INVALID_ENDPOINT"),
        ({"endpoint": "/api/../admin", "method": "GET"}, "INVALID_ENDPOINT"),
        ({"endpoint": "/api/x?y=1", "method": "GET"}, "INVALID_ENDPOINT"),
        ({"endpoint": "/api/health", "method": "get"}, "INVALID_METHOD"),
        ({"endpoint": "/api/health", "method": "HEAD"}, "INVALID_METHOD"),
        ({"endpoint": "/api/comms/broadcasts/[id]", "method": "GET"}, "INVALID_REQUEST"),
        ({"endpoint": "/api/health", "method": "GET", "query": ["x"]}, "INVALID_REQUEST"),
    ],
)
async def test_invalid_requests_are_400_with_a_code(spec: dict[str, Any], code: str) -> None:
    async with stack() as (gw, sandbox):
        answer = await gw.post("/api/verity", json=spec, headers=KEY)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == code
        assert (await sandbox.get("/_sandbox/calls")).json() == []


async def test_catalog_validation_warns_by_default_and_can_enforce() -> None:
    async with stack() as (gw, _):
        answer = await proxy(gw, endpoint="/api/health", method="GET")
        assert answer.status_code == 200 and "X-DFM-Catalog" not in answer.headers
        unknown = await proxy(gw, endpoint="/api/health", method="DELETE")
        assert unknown.headers["X-DFM-Catalog"] == "unknown-endpoint"
    async with stack(gateway_catalog_enforce=True) as (gw, sandbox):
        unknown = await proxy(gw, endpoint="/api/not/listed", method="GET")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "NOT_IN_CATALOG"
        assert (await sandbox.get("/_sandbox/calls")).json() == []


async def test_end_user_tokens_are_verified_before_they_are_passed_on() -> None:
    async with stack() as (gw, sandbox):
        cases = {
            "expired": await clerk_token(sandbox, exp=int(time.time()) - 60),
            "wrong issuer": await clerk_token(sandbox, iss="https://evil.example"),
            "garbage": "not.a.jwt",
        }
        for name, token in cases.items():
            for header in ("Authorization", "authorization", "AUTHORIZATION"):  # BUG-51: any case
                answer = await gw.post(
                    "/api/verity",
                    headers=KEY,
                    json={"endpoint": "/api/comms/broadcasts", "method": "GET", "headers": {header: f"Bearer {token}"}},
                )
                assert answer.status_code == 401, (name, header)
                assert answer.json()["error"]["code"] == "INVALID_TOKEN"
        assert (await sandbox.get("/_sandbox/calls", params={"vendor": "verity"})).json() == []
        valid = await clerk_token(sandbox)
        answer = await gw.post(
            "/api/verity",
            headers=KEY,
            json={
                "endpoint": "/api/comms/broadcasts",
                "method": "GET",
                "headers": {"authorization": f"Bearer {valid}", "X-Not-Forwarded": "1"},
            },
        )
        assert answer.status_code == 200 and answer.json()["data"]["user"] == "user_sandbox_service"
        no_token = await proxy(gw, endpoint="/api/comms/broadcasts", method="GET")
        assert no_token.status_code == 401  # passed on without a token: Verity's own 401
        assert no_token.json()["error"] == {
            "message": "Unauthorized",
            "code": "HTTP_401",
            "details": {"error": "Unauthorized"},
        }


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_pem_key_verification_checks_expiry_issuer_and_azp() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = Settings(
        clerk_jwt_key=public_pem(key),
        clerk_jwt_issuer="https://clerk.test",
        clerk_authorized_parties="https://app.test",
    )
    verifier = ClerkVerifier(settings)
    now = int(time.time())
    good = {"sub": "user_1", "iss": "https://clerk.test", "exp": now + 60, "azp": "https://app.test", "admin": True}

    def sign(claims: dict[str, Any], signer: Any = key) -> str:
        return jwt.encode(claims, signer, algorithm="RS256")

    user = await verifier.verify(sign(good))
    assert (user.user_id, user.is_admin) == ("user_1", True)
    for bad, reason in (
        ({**good, "exp": now - 30}, "expired"),
        ({**good, "iss": "https://x"}, "issuer"),
        ({**good, "azp": "https://evil"}, "azp"),
    ):
        with pytest.raises(TokenInvalid, match=reason):
            await verifier.verify(sign(bad))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenInvalid):
        await verifier.verify(sign(good, other))
    assert (await verifier.verify(sign({**good, "exp": now - 3}))).user_id == "user_1"  # 5 s leeway


async def test_verity_down_is_502_and_slow_is_504() -> None:
    closed = free_port()
    async with stack(verity_base_url=f"http://127.0.0.1:{closed}") as (gw, _):
        answer = await proxy(gw, endpoint="/api/health", method="GET")
        assert answer.status_code == 502 and answer.json()["error"]["code"] == "PROXY_ERROR"
    async with stack() as (gw, sandbox):
        await sandbox.post(
            "/_sandbox/faults",
            json={"vendor": "verity", "count": 1, "latency_ms": 3000, "path_contains": "/api/health"},
        )
        started = time.monotonic()
        answer = await proxy(gw, endpoint="/api/health", method="GET")
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
        assert time.monotonic() - started < 2.5


async def test_an_upstream_redirect_on_verity_s_origin_is_followed() -> None:
    """Found by schemathesis: Verity's 307 for ``/api`` went back to the caller as a 307 with no
    Location. That redirect (to ``/api/``, from the router in front of the fake's handlers) is
    on Verity's own origin, so it is followed (spec §2.1) and the caller gets Verity's answer
    there; a redirect to any other origin is still 502 UPSTREAM_REDIRECT and not followed
    (tests/integration/test_gateway_hardening.py)."""
    async with stack() as (gw, sandbox):
        answer = await proxy(gw, endpoint="/api", method="GET")
        assert answer.status_code == 401 and "location" not in answer.headers
        assert answer.json()["error"]["code"] == "HTTP_401"  # the fake's answer for /api/ without a token
        calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "verity"})).json()
        assert [c["path"] for c in calls] == ["/api/"]


async def test_production_errors_are_sanitised() -> None:
    async with stack(node_env="production") as (gw, sandbox):
        await sandbox.post(
            "/_sandbox/faults", json={"vendor": "verity", "count": 1, "status": 500, "path_contains": "/api/health"}
        )
        answer = await proxy(gw, endpoint="/api/health", method="GET")
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert error == {"message": "injected failure at [path]", "code": "HTTP_500"}  # no details, no path


async def test_rate_limit_per_client_with_headers_and_health_exempt() -> None:
    async with stack(rate_limit_max=3) as (gw, _):
        answers = [await gw.get("/api/verity", headers=KEY) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].headers["RateLimit-Limit"] == "3" and answers[2].headers["RateLimit-Remaining"] == "0"
        assert "Retry-After" in answers[3].headers
        other = await gw.get("/api/verity", headers={"Authorization": "Bearer gw-key-2"})
        assert other.status_code == 200  # another key has its own window
        health = [(await gw.get("/health")).status_code for _ in range(5)]
        assert health == [200] * 5


async def test_health_reports_checks_and_an_unavailable_catalog() -> None:
    async with stack(verity_catalog_path="/nonexistent/catalog.json") as (gw, _):
        health = await gw.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["service"] == "df-middleware"
        assert set(body["checks"]) >= {
            "database",
            "nats",
            "externalApi_ghl",
            "externalApi_aloware",
            "externalApi_verity",
        }
        assert body["checks"]["catalog"]["status"] == "warning"
        answer = await gw.get("/api/verity", headers=KEY)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "CATALOG_UNAVAILABLE"
        proxied = await proxy(gw, endpoint="/api/health", method="GET")
        assert proxied.status_code == 200  # POST still proxies without validation


async def test_oversized_body_is_413() -> None:
    async with stack() as (gw, _):
        answer = await gw.post("/api/verity", headers=KEY, content=b"{" + b" " * 110_000 + b"}")
        assert answer.status_code == 413


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"endpoint":"/api/health","method":"GET","body":' + b"[" * 40 + b"]" * 40 + b"}", "json_too_deep"),
        (b'{"endpoint":"/api/health","method":"GET","body":{"n":NaN}}', "non_finite_number"),
        (b'{"endpoint":"/api/health","method":"GET","body":"\\ud800"}', "invalid_unicode_escape"),
        ('{"endpoint":"/api/health","method":"GET"}'.encode("utf-16"), "body_not_utf8"),
        (b"[1]", "body must be a JSON object"),
    ],
)
async def test_bodies_the_proxy_cannot_pass_on_are_400_never_500(body: bytes, message: str) -> None:
    async with stack() as (gw, sandbox):
        answer = await gw.post("/api/verity", headers={**KEY, "content-type": "application/json"}, content=body)
        assert answer.status_code == 400 and answer.json()["error"]["message"] == message, answer.text
        assert (await sandbox.get("/_sandbox/calls")).json() == []


async def test_a_chunked_body_over_the_cap_is_413_without_content_length() -> None:
    async def chunks() -> Any:
        for _ in range(12):
            yield b" " * 10_000

    async with stack() as (gw, _):
        answer = await gw.post("/api/verity", headers=KEY, content=chunks())
        assert answer.status_code == 413
