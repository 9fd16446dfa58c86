"""Gateway path parameters cannot walk out of the endpoint they fill (issue #14 item 8).

The gateway fills ``[x]``/``{x}`` of a catalog template with caller values. ``..`` stayed
``..`` after encoding and httpx resolved it, so ``/api/comms/broadcasts/[id]`` with
``id=..`` reached ``/api/comms``; and ``requireAdmin`` was looked up by the unresolved
template, so a template the catalog does not list (``/api/calls/[x]``) that resolves to an
admin path (``/api/calls/scripts``) skipped the check. Against the sandbox's fake Verity,
whose recorded calls show what reached it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.clients.verity import ProxyError, target
from tests.support.gateway import clerk_token, proxy, stack

BROADCAST = "/api/comms/broadcasts/[id]"


async def verity_calls(sandbox: httpx.AsyncClient) -> list[dict[str, Any]]:
    return list((await sandbox.get("/_sandbox/calls", params={"vendor": "verity"})).json())


@pytest.mark.parametrize(
    "value",
    ["..", ".", "", "%2e%2e", "%2E%2e", "%252e%252e", ".%2e", "a/b", "..%2f..", "a\\..", "a\nb", "\x00", "a\x7fb"],
)
async def test_a_walking_or_malformed_path_parameter_is_400_and_reaches_nothing(value: str) -> None:
    async with stack() as (gw, sandbox):
        token = await clerk_token(sandbox)
        answer = await proxy(
            gw, endpoint=BROADCAST, method="GET", params={"id": value}, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "INVALID_PARAMETER" and "path parameter id" in error["message"]
        assert await verity_calls(sandbox) == []


async def test_a_normal_parameter_still_proxies_encoded() -> None:
    async with stack() as (gw, sandbox):
        token = await clerk_token(sandbox)
        for value, seen in (
            ("b42", "/api/comms/broadcasts/b42"),
            ("b 1", "/api/comms/broadcasts/b 1"),
            ("50%", "/api/comms/broadcasts/50%"),
            ("x..y", "/api/comms/broadcasts/x..y"),
        ):
            answer = await proxy(
                gw, endpoint=BROADCAST, method="GET", params={"id": value}, headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"]["path"] == seen
        assert [c["path"] for c in await verity_calls(sandbox)] == [
            "/api/comms/broadcasts/b42",
            "/api/comms/broadcasts/b 1",
            "/api/comms/broadcasts/50%",
            "/api/comms/broadcasts/x..y",
        ]


@pytest.mark.parametrize("endpoint", ["/api/./calls/scripts", "/api/calls/./scripts", "/api//calls/scripts"])
async def test_dot_and_empty_segments_in_the_endpoint_are_400(endpoint: str) -> None:
    async with stack() as (gw, sandbox):
        answer = await proxy(gw, endpoint=endpoint, method="GET")
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "INVALID_ENDPOINT"
        assert await verity_calls(sandbox) == []


async def test_require_admin_is_decided_by_the_path_a_template_resolves_to() -> None:
    """``/api/calls/[x]`` is not in the catalog, but with ``x=scripts`` it is the catalog's
    admin-only ``/apicalls/scripts``: a non-admin user gets 403 and Verity sees nothing."""
    async with stack() as (gw, sandbox):
        user = await clerk_token(sandbox, sub="user_plain")
        admin = await clerk_token(sandbox, sub="user_admin", admin=True)
        for endpoint, params in (
            ("/api/calls/[x]", {"x": "scripts"}),
            ("/api/[a]/scripts", {"a": "calls"}),
            ("/apicalls/scripts", None),
        ):
            answer = await proxy(
                gw, endpoint=endpoint, method="GET", params=params, headers={"Authorization": f"Bearer {user}"}
            )
            assert answer.status_code == 403, (endpoint, answer.text)
            assert answer.json()["error"]["code"] == "FORBIDDEN"
        assert await verity_calls(sandbox) == []
        answer = await proxy(
            gw,
            endpoint="/api/calls/[x]",
            method="GET",
            params={"x": "scripts"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert answer.status_code == 200 and answer.json()["data"]["path"] == "/api/calls/scripts"
        assert "X-DFM-Catalog" not in answer.headers  # the resolved path is in the catalog


async def test_catalog_enforcement_looks_at_the_resolved_path() -> None:
    async with stack(gateway_catalog_enforce=True) as (gw, sandbox):
        token = await clerk_token(sandbox)
        listed = await proxy(
            gw,
            endpoint="/api/comms/[what]",
            method="GET",
            params={"what": "broadcasts"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert listed.status_code == 200, listed.text
        unlisted = await proxy(
            gw,
            endpoint="/api/comms/[what]",
            method="GET",
            params={"what": "secrets"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert unlisted.status_code == 404 and unlisted.json()["error"]["code"] == "NOT_IN_CATALOG"
        assert [c["path"] for c in await verity_calls(sandbox)] == ["/api/comms/broadcasts"]


async def test_a_url_httpx_refuses_is_400_not_500() -> None:
    """A query long enough that httpx refuses the URL (``httpx.InvalidURL``) is the caller's
    mistake, answered 400, not an unhandled 500."""
    async with stack() as (gw, sandbox):
        answer = await proxy(gw, endpoint="/api/health", method="GET", query={"q": "x" * 70_000})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "INVALID_REQUEST"
        assert await verity_calls(sandbox) == []


@given(st.text(max_size=30))
def test_whatever_a_parameter_holds_the_url_sent_stays_inside_its_template(value: str) -> None:
    try:
        path = target(BROADCAST, {"id": value})
    except ProxyError as exc:
        assert (exc.status, exc.code) == (400, "INVALID_PARAMETER")
        return
    sent = httpx.URL("http://127.0.0.1:1/verity" + path).raw_path.decode()
    prefix = "/verity/api/comms/broadcasts/"
    assert sent.startswith(prefix) and "/" not in sent[len(prefix) :] and sent[len(prefix) :] not in ("", ".", "..")
