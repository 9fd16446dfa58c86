"""The fake Clerk Backend API under ``/clerk``: the service user's sessions, RS256 session
tokens and the JWKS that verifies them; ``/_sandbox/clerk/...`` mints tokens with chosen
claims and revokes the ones minted so far (the fake Verity then rejects them)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.sandbox.state import Sandbox, SandboxDep

__all__ = ["CLERK_ISSUER", "CLERK_PREFIX", "CLERK_SESSION", "mint_clerk_token", "router", "verify_clerk"]

CLERK_PREFIX = "/clerk"
CLERK_ISSUER = "https://clerk.sandbox.local"
CLERK_SESSION = "sess_sandbox_0001"

router = APIRouter()


def mint_clerk_token(sandbox: Sandbox, ttl_s: int) -> str:
    """A session JWT of the service user, signed with the sandbox key."""
    jti = uuid.uuid4().hex
    now = int(time.time())
    sandbox.state.clerk_minted.append(jti)
    claims = {
        "sub": sandbox.credentials.clerk_user,
        "sid": CLERK_SESSION,
        "iss": CLERK_ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": jti,
    }
    return jwt.encode(claims, sandbox.clerk_key, algorithm="RS256", headers={"kid": "sandbox"})


def verify_clerk(sandbox: Sandbox, authorization: str | None) -> str | None:
    """The user of a valid, unrevoked sandbox token (None otherwise)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    try:
        claims = jwt.decode(
            authorization[7:], sandbox.clerk_key.public_key(), algorithms=["RS256"], issuer=CLERK_ISSUER
        )
    except jwt.InvalidTokenError:
        return None
    if sandbox.state.clerk_reject_all or claims.get("jti") in sandbox.state.clerk_revoked:
        return None
    return str(claims["sub"])


def _refuse_secret(sandbox: Sandbox, request: Request) -> JSONResponse | None:
    if request.headers.get("authorization") != f"Bearer {sandbox.credentials.clerk_secret}":
        return JSONResponse({"errors": [{"message": "Unauthorized"}]}, status_code=401)
    return None


@router.get(CLERK_PREFIX + "/v1/sessions")
async def clerk_sessions(request: Request, sandbox: SandboxDep) -> JSONResponse:
    if (refused := _refuse_secret(sandbox, request)) is not None:
        return refused
    user = request.query_params.get("user_id")
    now_ms = int(time.time() * 1000)
    sessions: list[dict[str, Any]] = [] if user != sandbox.credentials.clerk_user else [
        {"object": "session", "id": CLERK_SESSION, "user_id": user, "status": "active", "last_active_at": now_ms},
        {"object": "session", "id": "sess_sandbox_old", "user_id": user, "status": "ended",
         "last_active_at": now_ms - 86_400_000}]  # fmt: skip
    status = request.query_params.get("status")
    sessions = [x for x in sessions if status in (None, x["status"])]
    sandbox.log.record(
        "clerk", "GET", "/sessions", 200, None, dict(request.query_params), request.headers.get("traceparent")
    )
    return JSONResponse(sessions)


@router.post(CLERK_PREFIX + "/v1/sessions/{session_id}/tokens")
async def clerk_token(session_id: str, request: Request, sandbox: SandboxDep) -> JSONResponse:
    if (refused := _refuse_secret(sandbox, request)) is not None:
        return refused
    if session_id != CLERK_SESSION:
        return JSONResponse({"errors": [{"message": "session not found"}]}, status_code=404)
    body = json.loads(await request.body() or b"{}")
    token = mint_clerk_token(sandbox, int(body.get("expires_in_seconds", 60)))
    sandbox.log.record(
        "clerk", "POST", f"/sessions/{session_id}/tokens", 200, body, {}, request.headers.get("traceparent")
    )
    return JSONResponse({"object": "token", "jwt": token})


@router.get(CLERK_PREFIX + "/.well-known/jwks.json")
async def clerk_jwks(sandbox: SandboxDep) -> JSONResponse:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(sandbox.clerk_key.public_key()))
    return JSONResponse({"keys": [{**jwk, "kid": "sandbox", "use": "sig", "alg": "RS256"}]})


@router.post("/_sandbox/clerk/mint")
async def clerk_mint(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """A token with chosen claims (expired, other issuer...) signed with the sandbox key."""
    claims = await request.json()
    now = int(time.time())
    claims = {"sub": sandbox.credentials.clerk_user, "iss": CLERK_ISSUER, "iat": now, "exp": now + 600, **claims}
    return JSONResponse({"jwt": jwt.encode(claims, sandbox.clerk_key, algorithm="RS256", headers={"kid": "sandbox"})})


@router.post("/_sandbox/clerk/expire-tokens")
async def clerk_expire(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """Every token minted so far is rejected by the fake Verity from now on; with
    ``?all=true`` every future token too (a Verity that no longer trusts the instance)."""
    sandbox.state.clerk_revoked.update(sandbox.state.clerk_minted)
    sandbox.state.clerk_reject_all = request.query_params.get("all") == "true"
    return JSONResponse({"revoked": len(sandbox.state.clerk_revoked)})
