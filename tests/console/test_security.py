"""The console's doors: anonymous requests, CSRF, the session cookie's flags, revocation, idle
timeout, the throttle on failed sign-ins, first-start sign-in, and the audit trail."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.routing import APIRoute
from structlog.testing import capture_logs

from services.console.auth import Credentials, hash_password, verify_password
from services.infra.settings import ConfigError, Settings
from tests.console.rig import (
    OPERATORS,
    console_client,
    console_settings,
    csrf_of,
    execute,
    fetch,
    insert_event,
    sign_in,
    signed_in,
)

PUBLIC = {"/signin", "/health"}


def _routes(app: object) -> list[tuple[str, str]]:
    """Every (method, path) of the console but sign-in and health, with path parameters filled."""
    found = []
    routes = []
    for route in app.routes:  # type: ignore[attr-defined]
        # FastAPI 0.165 keeps an included router whole (no prefixes here, so paths are as written)
        routes += getattr(getattr(route, "original_router", None), "routes", [route])
    for route in routes:
        if not isinstance(route, APIRoute) or route.path in PUBLIC:
            continue
        path = route.path.replace("{event_id}", str(uuid.uuid4())).replace("{command_id}", str(uuid.uuid4()))
        for method in route.methods:
            found.append((method, path))
    return found


async def test_every_page_and_action_refuses_an_anonymous_request(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        routes = _routes(client.app)  # type: ignore[attr-defined]
        assert {m for m, _ in routes} == {"GET", "POST"} and len(routes) >= 15
        for method, path in routes:
            answer = await client.request(method, path, params={"event": "x"} if "commands" in path else None)
            if method == "GET":
                assert answer.status_code == 303, (method, path, answer.status_code)
                assert answer.headers["location"].startswith("/signin?next="), path
            else:
                assert answer.status_code == 401, (method, path, answer.status_code)
            assert "DF-Middleware console" not in answer.text or path == "/signin"
        # htmx is told where to go instead of swapping a sign-in page into a fragment
        polled = await client.get("/overview/panel", headers={"HX-Request": "true"})
        assert polled.status_code == 401 and polled.headers["HX-Redirect"] == "/signin"


async def test_a_post_without_the_csrf_token_is_refused(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        csrf = await signed_in(client)
        event_id = await insert_event(base_env["DATABASE_URL"], status="dead")
        posts = [(m, p) for m, p in _routes(client.app) if m == "POST"]  # type: ignore[attr-defined]
        for _, path in posts:
            path = path.replace(path.split("/")[2], event_id) if path.startswith("/events/") else path
            for headers, data in (
                ({}, {"reason": "r"}),
                ({"X-CSRF-Token": "wrong"}, {"reason": "r"}),
                ({}, {"reason": "r", "csrf_token": csrf[:-1] + ("1" if csrf.endswith("0") else "0")}),
            ):
                answer = await client.post(path, headers=headers, data=data)
                assert answer.status_code == 403, (path, headers, answer.status_code)
        # nothing happened: the event is still dead, and still signed in
        assert (await fetch(base_env["DATABASE_URL"], "SELECT status FROM webhook_events"))[0]["status"] == "dead"
        assert (await client.get("/overview")).status_code == 200
        # with the token the same action is taken
        done = await client.post(f"/events/{event_id}/mark-done", data={"csrf_token": csrf})
        assert done.status_code == 303
        assert (await fetch(base_env["DATABASE_URL"], "SELECT status FROM webhook_events"))[0]["status"] == "done"


async def test_the_sign_in_form_itself_needs_its_token(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        await client.get("/signin")
        answer = await client.post("/signin", data={"username": "alice", "password": OPERATORS["alice"]})
        assert answer.status_code == 403
        assert (await client.get("/overview")).status_code == 303


@pytest.mark.parametrize("node_env", ["production", "test"])
async def test_the_session_cookie_is_httponly_samesite_strict_and_secure(
    base_env: dict[str, str], node_env: str
) -> None:
    settings = console_settings(base_env, NODE_ENV=node_env)
    async with console_client(settings, base_url="https://console.test") as client:
        answer = await sign_in(client)
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"].lower()
        assert cookie.startswith("dfm_console=")
        for flag in ("httponly", "samesite=strict", "secure", "path=/"):
            assert flag in cookie, (flag, cookie)
        assert (await client.get("/overview")).status_code == 200


async def test_in_development_the_cookie_is_not_secure_but_still_httponly_and_strict(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env, NODE_ENV="development")) as client:
        cookie = (await sign_in(client)).headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie


async def test_pages_forbid_framing_and_foreign_scripts(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        page = await client.get("/signin")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        htmx = await client.get("/static/htmx.min.js")
        assert htmx.status_code == 200 and "htmx" in htmx.text[:2000]


async def test_a_revealed_payload_is_audited(base_env: dict[str, str]) -> None:
    database = base_env["DATABASE_URL"]
    event_id = await insert_event(database, status="done")
    async with console_client(console_settings(base_env)) as client:
        csrf = await signed_in(client)
        page = await client.get(f"/events/{event_id}")
        assert page.status_code == 200
        assert "jane.doe@example.com" not in page.text and "[REDACTED]" in page.text
        assert await fetch(database, "SELECT * FROM console_audit WHERE action = 'reveal_payload'") == []
        # reveal is a POST, refused without the token and then not audited
        assert (await client.post(f"/events/{event_id}/reveal")).status_code == 403
        assert await fetch(database, "SELECT * FROM console_audit WHERE action = 'reveal_payload'") == []
        revealed = await client.post(f"/events/{event_id}/reveal", headers={"X-CSRF-Token": csrf})
        assert revealed.status_code == 200 and "jane.doe@example.com" in revealed.text
    rows = await fetch(database, "SELECT * FROM console_audit WHERE action = 'reveal_payload'")
    assert len(rows) == 1
    assert rows[0]["operator"] == "alice" and rows[0]["target"] == f"event:{event_id}"
    assert rows[0]["client"] == "127.0.0.1" and rows[0]["at"] > datetime.now(UTC) - timedelta(minutes=1)
    assert "jane" not in str(rows[0]["detail"])


async def test_failed_sign_ins_are_throttled_per_address_and_logged_without_the_password(
    base_env: dict[str, str],
) -> None:
    database = base_env["DATABASE_URL"]
    settings = console_settings(base_env, CONSOLE_SIGNIN_MAX_FAILURES="3")
    async with console_client(settings) as client:
        with capture_logs() as logs:
            for guess in ("guess-one", "guess-two", "guess-three"):
                answer = await sign_in(client, "alice", guess)
                assert answer.status_code == 401 and "wrong name or password" in answer.text
            refused = await sign_in(client, "alice")  # the right password, too late
        assert refused.status_code == 429 and "too many failed sign-ins" in refused.text
        assert (await client.get("/overview")).status_code == 303
        assert [e["event"] for e in logs].count("console_signin_failed") == 3
        assert "console_signin_throttled" in [e["event"] for e in logs]
        assert not any("guess" in str(e) for e in logs)
    rows = await fetch(database, "SELECT operator, action, client, detail FROM console_audit ORDER BY at")
    assert [r["action"] for r in rows] == ["signin_failed"] * 3 + ["signin_throttled"]
    assert all(r["operator"] == "alice" and r["client"] == "127.0.0.1" for r in rows)
    assert not any("guess" in str(r) for r in rows)
    # the refusal is per address: another machine still signs in
    async with console_client(settings, client=("10.0.0.7", 40000)) as other:
        assert (await sign_in(other, "bob")).status_code == 303


async def test_failed_sign_ins_are_throttled_per_operator_across_addresses(base_env: dict[str, str]) -> None:
    settings = console_settings(base_env, CONSOLE_SIGNIN_MAX_FAILURES="3", CONSOLE_TRUSTED_PROXIES="127.0.0.1/32")
    async with console_client(settings) as client:
        for n in range(3):
            hop = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
            assert (await sign_in(client, "alice", "nope", headers=hop)).status_code == 401
        fresh = {"X-Forwarded-For": "198.51.100.9"}
        assert (await sign_in(client, "alice", headers=fresh)).status_code == 429  # alice is locked
        assert (await sign_in(client, "bob", headers=fresh)).status_code == 303  # bob is not
    clients = [
        r["client"]
        for r in await fetch(
            base_env["DATABASE_URL"], "SELECT client FROM console_audit WHERE action = 'signin_failed'"
        )
    ]
    assert sorted(clients) == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]


async def test_an_unknown_name_is_recorded_without_what_was_typed(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        assert (await sign_in(client, "my-password-by-mistake", "x")).status_code == 401
    rows = await fetch(base_env["DATABASE_URL"], "SELECT operator FROM console_audit")
    assert rows == [{"operator": "(unknown)"}]


async def test_sign_out_ends_the_session_and_a_copied_cookie_with_it(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        csrf = await signed_in(client)
        copied = dict(client.cookies)
        assert (await client.post("/signout", data={"csrf_token": csrf})).status_code == 303
        assert (await client.get("/overview")).status_code == 303
        client.cookies.update(copied)
        assert (await client.get("/overview")).status_code == 303  # the row is ended, not only the cookie
    rows = await fetch(base_env["DATABASE_URL"], "SELECT action FROM console_audit ORDER BY at")
    actions = [r["action"] for r in rows]
    assert actions == ["signin", "signout"]


async def test_an_idle_session_is_signed_out(base_env: dict[str, str]) -> None:
    database = base_env["DATABASE_URL"]
    async with console_client(console_settings(base_env, CONSOLE_IDLE_TIMEOUT_S="60")) as client:
        await signed_in(client)
        assert (await client.get("/events")).status_code == 200
        await execute(database, "UPDATE console_sessions SET last_seen_at = now() - interval '61 seconds'")
        answer = await client.get("/events")
        assert answer.status_code == 303 and answer.headers["location"] == "/signin?next=%2Fevents"
    assert (await fetch(database, "SELECT ended_at FROM console_sessions"))[0]["ended_at"] is not None


async def test_the_admin_secret_signs_in_only_while_no_operator_is_configured(base_env: dict[str, str]) -> None:
    admin_secret = base_env["DF_ADMIN_SECRET"].split(",")[1]
    first = console_settings(base_env, CONSOLE_OPERATORS="")
    async with console_client(first) as client:
        assert "First start" in (await client.get("/signin")).text
        assert (await sign_in(client, "admin", "wrong")).status_code == 401
        assert (await sign_in(client, "admin", admin_secret)).status_code == 303
    async with console_client(console_settings(base_env)) as client:
        assert (await sign_in(client, "admin", admin_secret)).status_code == 401


async def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        page = await client.get("/signin", params={"next": "/events?status=dead"})
        data = {"username": "alice", "password": OPERATORS["alice"], "csrf_token": csrf_of(page.text)}
        assert (await client.post("/signin", data={**data, "next": "/events?status=dead"})).headers[
            "location"
        ] == "/events?status=dead"
    async with console_client(console_settings(base_env)) as client:
        page = await client.get("/signin")
        data = {"username": "alice", "password": OPERATORS["alice"], "csrf_token": csrf_of(page.text)}
        assert (await client.post("/signin", data={**data, "next": "//evil.example/x"})).headers[
            "location"
        ] == "/overview"


def test_passwords_are_scrypt_hashes_with_a_random_salt() -> None:
    one, two = hash_password("a long password", n=1024), hash_password("a long password", n=1024)
    assert one.startswith("scrypt$1024$8$1$") and one != two
    assert verify_password("a long password", one) and verify_password("a long password", two)
    assert not verify_password("a long passwor", one)
    assert not verify_password("a long password", "scrypt$3$8$1$AA$AA")  # n not a power of two
    assert not verify_password("a long password", "bcrypt$whatever")


def test_a_malformed_operator_entry_stops_the_console_naming_it_but_not_its_hash() -> None:
    with pytest.raises(ConfigError, match="entry 2"):
        Credentials.from_settings(Settings(console_operators=f"alice:{hash_password('p', n=1024)},bob"))
    with pytest.raises(ConfigError, match="hash of bob") as raised:
        Credentials.from_settings(Settings(console_operators="bob:sha1$deadbeef"))
    assert "deadbeef" not in str(raised.value)


def test_production_refuses_no_session_secret_and_an_open_host_without_a_tls_proxy() -> None:
    with pytest.raises(ConfigError, match="CONSOLE_SESSION_SECRET"):
        Settings(node_env="production").refuse_insecure_console()
    secret = "k" * 40
    with pytest.raises(ConfigError, match=r"CONSOLE_HOST=0\.0\.0\.0"):
        Settings(node_env="production", console_session_secret=secret, console_host="0.0.0.0").refuse_insecure_console()
    Settings(node_env="production", console_session_secret=secret).refuse_insecure_console()  # loopback
    Settings(
        node_env="production", console_session_secret=secret, console_host="0.0.0.0", console_tls_proxy=True
    ).refuse_insecure_console()
    Settings(node_env="development", console_host="0.0.0.0").refuse_insecure_console()
    assert Settings().console_port == 3004 and Settings().console_host == "127.0.0.1"
