"""Admin and jobs endpoints of the ingress over real HTTP (spec/inbound.md §4.5, §4.6)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.infra.settings import Settings
from tests.conftest import TEST_SECRETS
from tests.support.admin import ADMIN, BASE, insert_events  # noqa: F401
from tests.support.ingress_rig import running_ingress
from tests.support.jobs import cli
from tests.support.jobs_rig import fetch

ROTATED = {"Authorization": "Bearer admin-secret-2"}
JOBS = {"X-DF-JOBS-SECRET": TEST_SECRETS["X_DF_JOBS_SECRET"]}


@pytest.fixture
async def ingress(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_ingress(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


# fixed ids, not uuid4(): pytest-xdist's workers must collect the same test names
SOME_EVENT = "5a1d0000-0000-4000-8000-00000000a001"
ADMIN_CALLS = [
    ("GET", "/api/admin/events"),
    ("GET", "/api/admin/texting/events"),
    ("GET", f"/api/admin/events/{SOME_EVENT}"),
    ("POST", f"/api/admin/events/{SOME_EVENT}/replay"),
    ("POST", f"/api/admin/events/{SOME_EVENT}/mark-done"),
    ("POST", f"/api/admin/events/{SOME_EVENT}/quarantine"),
    ("POST", "/api/admin/replays"),
    ("GET", f"/api/admin/replays/{SOME_EVENT}"),
]
JOBS_CALLS = [
    ("POST", "/api/jobs/process-pending"),
    ("GET", "/api/jobs/process-pending"),
    ("POST", "/api/jobs/enqueue-pending"),
    ("POST", "/api/jobs/enqueue-texting-pending"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS + JOBS_CALLS)
async def test_missing_or_wrong_secret_is_401_json(ingress: httpx.AsyncClient, method: str, path: str) -> None:
    wrong_admin = {"X-DF-ADMIN-SECRET": "admin-secret-3"}
    for headers in (
        {},
        wrong_admin,
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic admin-secret-1"},
        JOBS if path.startswith("/api/admin") else ADMIN,
    ):
        answer = await ingress.request(method, path, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.json()["error"] == "Unauthorized"


@pytest.mark.parametrize("headers", [ADMIN, ROTATED, {"x-df-admin-secret": "admin-secret-2"}])
async def test_either_header_form_and_every_rotated_secret_is_accepted(
    ingress: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    listed = await ingress.get("/api/admin/events", headers=headers)
    assert listed.status_code == 200 and listed.json() == {"events": [], "count": 0, "nextCursor": None}
    missing = await ingress.post(f"/api/admin/events/{uuid.uuid4()}/mark-done", headers=headers)
    assert missing.status_code == 404
    malformed = await ingress.post("/api/admin/events/not-a-uuid/mark-done", headers=headers)
    assert malformed.status_code == 404


async def test_jobs_endpoint_queues_a_sweep(ingress: httpx.AsyncClient, settings: Settings) -> None:
    for headers in (
        JOBS,
        {"Authorization": f"Bearer {TEST_SECRETS['X_DF_JOBS_SECRET']}"},
        {"X-DF-Jobs-Secret": TEST_SECRETS["X_DF_JOBS_SECRET"]},
    ):
        answer = await ingress.post("/api/jobs/process-pending", headers=headers)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["success"] is True and body["status"] == "queued" and uuid.UUID(body["sweepId"])


async def test_pagination_is_stable_under_concurrent_inserts(ingress: httpx.AsyncClient, clean_db: str) -> None:
    original = set(await insert_events(clean_db, 300))
    seen: list[str] = []
    cursor: str | None = None
    inserting = asyncio.create_task(_keep_inserting(clean_db))
    pages = 0
    try:
        while True:
            params = {"limit": "17", "order": "asc", **({"cursor": cursor} if cursor else {})}
            answer = await ingress.get("/api/admin/events", params=params, headers=ADMIN)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            seen += [e["id"] for e in body["events"]]
            pages += 1
            cursor = body["nextCursor"]
            if cursor is None:
                break
    finally:
        inserting.cancel()
    inserted_meanwhile = await fetch(clean_db, "SELECT count(*) AS n FROM webhook_events")
    assert inserted_meanwhile[0]["n"] > 300  # rows really were added while paging
    assert len(seen) == len(set(seen))  # nothing twice
    assert original <= set(seen)  # nothing that existed was skipped
    assert pages > 300 // 17


async def _keep_inserting(db: str) -> None:
    while True:
        # new rows land everywhere in the time range, including before the cursor
        await insert_events(db, 5, start=random.randint(-3600, 86_400))
        await asyncio.sleep(0)


async def test_filters_limits_and_redaction(ingress: httpx.AsyncClient, clean_db: str) -> None:
    await insert_events(clean_db, 3, status="dead")
    await insert_events(clean_db, 2, status="done")
    answer = await ingress.get("/api/admin/events", params={"status": "dead"}, headers=ADMIN)
    events = answer.json()["events"]
    assert len(events) == 3 and {e["status"] for e in events} == {"dead"}
    payload = events[0]["payload"]
    assert payload == {
        "email": "[REDACTED]",
        "nested": {"phone": "[REDACTED]"},
        "list": [{"firstName": "[REDACTED]"}],
        "id": "c1",
    }
    raw = await ingress.get("/api/admin/events", params={"status": "dead", "includePayload": "raw"}, headers=ADMIN)
    assert raw.json()["events"][0]["payload"]["email"] == "ada@example.com"
    # found by schemathesis (tests/integration/test_api_fuzz.py): a NUL in a filter was a 500 (PostgreSQL text
    # cannot hold it) and a number was read as a Unix time where an ISO date-time is documented
    for bad in (
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "x"},
        {"limit": "5.0"},  # schemathesis: lax int parsing took it
        {"limit": "٣"},  # a digit, not an ASCII one
        {"table": "nope"},
        {"cursor": "garbage"},
        {"source": "ghl\x00"},
        {"entityId": "\x00"},
        {"receivedTo": "0.0"},
        {"receivedFrom": "1700000000"},
    ):
        assert (await ingress.get("/api/admin/events", params=bad, headers=ADMIN)).status_code == 422, bad
    # found by schemathesis too: a filter given twice was answered with the last value, silently
    for path in ("/api/admin/events", "/api/admin/texting/events"):
        twice = await ingress.get(path, params=[("status", "dead"), ("status", "done")], headers=ADMIN)
        assert twice.status_code == 422, twice.text
        assert twice.json()["detail"][0]["loc"] == ["query", "status"], twice.text
        assert "given 2 times" in twice.json()["detail"][0]["msg"], twice.text
    anonymous = await ingress.get("/api/admin/events", params=[("status", "a"), ("status", "b")])
    assert anonymous.status_code == 401, anonymous.text  # the secret first: nothing about the route's inputs
    desc = (await ingress.get("/api/admin/events", params={"order": "desc", "limit": "5"}, headers=ADMIN)).json()
    times = [e["receivedAt"] for e in desc["events"]]
    assert times == sorted(times, reverse=True)


async def test_mark_done_quarantine_and_show(ingress: httpx.AsyncClient, clean_db: str) -> None:
    [dead] = await insert_events(clean_db, 1, status="dead")
    [busy] = await insert_events(clean_db, 1, status="processing")
    answer = await ingress.post(f"/api/admin/events/{dead}/mark-done", headers=ADMIN)
    assert answer.json() == {"success": True, "message": "Event marked as done", "eventId": dead}
    [row] = await fetch(
        clean_db, "SELECT status, outcome, outcome_reason FROM webhook_events WHERE id = $1::uuid", dead
    )
    assert row == {"status": "done", "outcome": "skipped", "outcome_reason": "marked_done_by_operator"}
    assert (await ingress.post(f"/api/admin/events/{busy}/mark-done", headers=ADMIN)).status_code == 409
    assert (await ingress.post(f"/api/admin/events/{busy}/quarantine", headers=ADMIN)).status_code == 409
    for _ in range(2):  # idempotent
        answer = await ingress.post(
            f"/api/admin/events/{dead}/quarantine", headers=ADMIN, json={"reason": "bad data", "quarantinedBy": "ops"}
        )
        assert answer.status_code == 200
    shown = (await ingress.get(f"/api/admin/events/{dead}", headers=ADMIN)).json()
    assert shown["status"] == "quarantined" and len(shown["quarantine"]) == 1
    assert shown["quarantine"][0]["reason"] == "bad data"
    assert {"deliveries", "attemptLog", "syncLog"} <= shown.keys()


async def test_events_cli_lists_and_marks_done(base_env: dict[str, str], clean_db: str) -> None:
    [dead] = await insert_events(clean_db, 1, status="dead")
    listed = cli(base_env, "events", "list", "--status", "dead")
    assert listed.returncode == 0, listed.stderr
    assert dead in listed.stdout and "1 events" in listed.stdout
    done = cli(base_env, "events", "mark-done", dead)
    assert done.returncode == 0 and "marked done" in done.stdout
    again = cli(base_env, "events", "quarantine", str(uuid.uuid4()))
    assert again.returncode == 1 and "Event not found" in again.stderr
