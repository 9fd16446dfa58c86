"""Events in the console: the list's filters and keyset paging, an event's timeline, and the
actions, with replays run by the real jobs service on a private nats-server."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from services.infra.settings import Settings
from tests.console.rig import (
    console_client,
    console_settings,
    eventually,
    fetch,
    insert_attempt,
    insert_event,
    signed_in,
)
from tests.support.jobs_rig import running_jobs

EVENT_LINK = re.compile(r'href="/events/([0-9a-f-]{36})\?table=webhook" class="event-link"')
COMMAND = re.compile(r'id="command-([0-9a-f-]{36})"')


async def test_the_list_filters_like_the_admin_api_and_finds_an_event_by_its_ghl_id(base_env: dict[str, str]) -> None:
    database = base_env["DATABASE_URL"]
    wanted = await insert_event(database, entity_id="ghlContactWANTED", status="dead")
    other = await insert_event(database, entity_id="ghlContactOther", status="dead")
    done = await insert_event(database, entity_id="ghlContactOther2", status="done")
    aloware = await insert_event(
        database, source="aloware", event_type="contact_updated", entity_id="778899", status="error"
    )
    async with console_client(console_settings(base_env)) as client:
        await signed_in(client)
        found = EVENT_LINK.findall((await client.get("/events", params={"q": "ghlContactWANTED"})).text)
        assert found == [wanted]
        assert EVENT_LINK.findall((await client.get("/events", params={"q": wanted})).text) == [wanted]
        assert EVENT_LINK.findall((await client.get("/events", params={"q": f"test:{wanted}"})).text) == [wanted]
        assert set(EVENT_LINK.findall((await client.get("/events", params={"status": "dead"})).text)) == {wanted, other}
        assert EVENT_LINK.findall((await client.get("/events", params={"source": "aloware"})).text) == [aloware]
        assert EVENT_LINK.findall((await client.get("/events", params={"entity_id": "ghlContactOther2"})).text) == [
            done
        ]
        future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        assert EVENT_LINK.findall((await client.get("/events", params={"since": future})).text) == []
        bad = await client.get("/events", params={"since": "yesterday"})
        assert bad.status_code == 422 and "not a time" in bad.text


async def test_the_list_is_newest_first_in_keyset_pages(base_env: dict[str, str]) -> None:
    database = base_env["DATABASE_URL"]
    now = datetime.now(UTC)
    ids = [
        await insert_event(database, entity_id=f"c{n}", status="done", received_at=now - timedelta(seconds=n))
        for n in range(60)
    ]
    async with console_client(console_settings(base_env)) as client:
        await signed_in(client)
        first = (await client.get("/events", params={"status": "done"})).text
        assert EVENT_LINK.findall(first) == ids[:50]
        older = re.search(r'id="next-page" href="([^"]+)"', first)
        assert older
        second = (await client.get(older.group(1).replace("&amp;", "&"))).text
        assert EVENT_LINK.findall(second) == ids[50:]
        assert 'id="next-page"' not in second


async def test_an_event_page_shows_its_timeline_with_vendor_calls_mappings_and_sync_log(
    base_env: dict[str, str],
) -> None:
    database = base_env["DATABASE_URL"]
    event_id = await insert_event(database, status="error")
    await insert_attempt(
        database,
        event_id,
        calls=[
            {
                "vendor": "aloware",
                "method": "GET",
                "path": "/api/v1/webhook/contact/phone-number",
                "status": "200",
                "ms": 12.5,
                "at": datetime.now(UTC).isoformat(),
            },
            {
                "vendor": "aloware",
                "method": "POST",
                "path": "/api/v1/webhook/forms",
                "status": "500",
                "ms": 301.0,
                "at": datetime.now(UTC).isoformat(),
            },
        ],
        mappings=[{"kind": "contact", "action": "upsert", "ghl": "ghlContact0001", "aloware": "42"}],
    )
    async with console_client(console_settings(base_env)) as client:
        await signed_in(client)
        page = (await client.get(f"/events/{event_id}")).text
    timeline = page[page.index('id="timeline"') : page.index('id="deliveries"')]
    for text in (
        "received",
        "aloware-sync attempt 1",
        "/api/v1/webhook/contact/phone-number",
        "POST",
        "/api/v1/webhook/forms",
        "500",
        "301.0 ms",
        "mapping contact upsert",
        "aloware=42",
        "sync_log CG-3 ghl_to_aloware",
        "aloware 500 at contact.upsert",
        "stream seq 7",
    ):
        assert text in timeline, text
    assert timeline.index("received") < timeline.index("aloware-sync attempt 1") < timeline.index("sync_log CG-3")
    assert timeline.count('class="vendor-call"') == 2


@pytest.fixture
def jobs_settings(base_env: dict[str, str]) -> Settings:
    return console_settings(base_env)


async def _command(client: object, answer_text: str, event_id: str, mode: str, force: bool = False) -> str:
    found = COMMAND.search(answer_text)
    assert found, answer_text
    command_id = found.group(1)

    async def report() -> str | None:
        text = (
            await client.get(
                f"/commands/{command_id}",
                params={  # type: ignore[attr-defined]
                    "event": event_id,
                    "mode": mode,
                    "force": str(force).lower(),
                },
            )
        ).text
        return text if "waiting for the jobs service" not in text and "queued;" not in text else None

    return str(await eventually(report))


async def test_replay_shows_the_jobs_dry_run_first_then_replays_on_confirmation(
    base_env: dict[str, str], jobs_settings: Settings
) -> None:
    database = base_env["DATABASE_URL"]
    event_id = await insert_event(database, status="dead")
    async with running_jobs(jobs_settings), console_client(jobs_settings) as client:
        csrf = await signed_in(client)
        headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
        queued = await client.post(f"/events/{event_id}/replay/preview", headers=headers)
        assert queued.status_code == 200 and "waiting for the jobs service to run the dry run" in queued.text
        plan = await _command(client, queued.text, event_id, "preview")
        assert (
            'id="dry-run"' in plan
            and "aloware-sync, verity-sync" in plan
            and "webhooks.ghl.contact.contact_update" in plan
        )
        assert 'id="confirm-replay"' in plan
        # the dry run changed nothing
        assert (await fetch(database, "SELECT status FROM webhook_events"))[0]["status"] == "dead"
        replayed = await client.post(f"/events/{event_id}/replay", headers=headers)
        assert replayed.status_code == 200
        done = await _command(client, replayed.text, event_id, "run")
        assert "replayed 1, skipped 0" in done
    row = (await fetch(database, "SELECT status, attempts, error_message FROM webhook_events"))[0]
    assert row == {"status": "pending", "attempts": 0, "error_message": None}  # reset and re-delivered
    runs = await fetch(database, "SELECT totals FROM reconcile_runs WHERE job_name = 'replay' ORDER BY started_at")
    assert [r["totals"]["dryRun"] for r in runs] == [True, False]
    assert all(r["totals"]["requestedBy"] == "console:alice" for r in runs)
    audit = await fetch(
        database, "SELECT action, target, detail FROM console_audit WHERE action LIKE 'replay%' ORDER BY at"
    )
    assert [a["action"] for a in audit] == ["replay_preview", "replay"]
    assert all(a["target"] == f"event:{event_id}" for a in audit)
    assert [a["detail"]["commandId"] for a in audit] == [r["totals"]["commandId"] for r in runs]


async def test_quarantine_with_a_reason_then_release_through_a_forced_replay(
    base_env: dict[str, str], jobs_settings: Settings
) -> None:
    database = base_env["DATABASE_URL"]
    event_id = await insert_event(database, status="error")
    async with running_jobs(jobs_settings), console_client(jobs_settings) as client:
        csrf = await signed_in(client)
        answer = await client.post(f"/events/{event_id}/quarantine", data={"csrf_token": csrf, "reason": "poison body"})
        assert answer.status_code == 303
        page = (await client.get(f"/events/{event_id}")).text
        assert 'id="event-status">quarantined' in page and "poison body (by console:alice)" in page
        assert 'id="release"' in page and 'id="replay"' not in page
        # a plain replay is refused while quarantined; release is the forced one
        headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
        refused = await client.post(f"/events/{event_id}/replay/preview", headers=headers)
        assert refused.status_code == 409 and "quarantined" in refused.text
        preview = await client.post(f"/events/{event_id}/replay/preview", headers=headers, data={"force": "true"})
        plan = await _command(client, preview.text, event_id, "preview", force=True)
        assert 'id="confirm-replay"' in plan and 'name="force" value="true"' in plan
        released = await client.post(f"/events/{event_id}/replay", headers=headers, data={"force": "true"})
        await _command(client, released.text, event_id, "run", force=True)
    assert (await fetch(database, "SELECT status FROM webhook_events"))[0]["status"] == "pending"
    q = (await fetch(database, "SELECT reason, quarantined_by, released_at, released_by FROM quarantine_events"))[0]
    assert q["reason"] == "poison body" and q["quarantined_by"] == "console:alice"
    assert q["released_at"] is not None and q["released_by"] == "console:alice"
    actions = [a["action"] for a in await fetch(database, "SELECT action FROM console_audit ORDER BY at")]
    assert actions == ["signin", "quarantine", "replay_preview", "release"]


async def test_mark_done_from_the_event_page(base_env: dict[str, str]) -> None:
    database = base_env["DATABASE_URL"]
    event_id = await insert_event(database, status="dead")
    async with console_client(console_settings(base_env)) as client:
        csrf = await signed_in(client)
        assert (await client.post(f"/events/{event_id}/mark-done", data={"csrf_token": csrf})).status_code == 303
        again = await client.post(f"/events/{event_id}/quarantine", data={"csrf_token": csrf, "reason": "x"})
        assert again.status_code == 303
    row = (await fetch(database, "SELECT status, outcome_reason FROM webhook_events"))[0]
    assert row == {"status": "quarantined", "outcome_reason": "marked_done_by_operator"}


async def test_bulk_replay_by_filter_previews_count_and_plans_then_follows_progress(
    base_env: dict[str, str], jobs_settings: Settings
) -> None:
    database = base_env["DATABASE_URL"]
    dead = {await insert_event(database, entity_id=f"dead{n}", status="dead") for n in range(3)}
    await insert_event(database, entity_id="fine", status="done")
    async with running_jobs(jobs_settings), console_client(jobs_settings) as client:
        csrf = await signed_in(client)
        preview = await client.post("/bulk/preview", data={"csrf_token": csrf, "status": "dead", "table": "webhook"})
        assert preview.status_code == 303
        page = (await client.get(preview.headers["location"])).text
        assert 'id="bulk-count">3<' in page and "status=dead" in page
        plan_url = preview.headers["location"] + "/plan"

        async def planned() -> str | None:
            text = (await client.get(plan_url)).text
            return text if 'id="bulk-summary"' in text else None

        plan = await eventually(planned)
        assert 'id="would-replay">3<' in plan and plan.count("webhooks.ghl.contact.contact_update") == 3
        confirm = re.search(r'action="(/bulk/[0-9a-f-]{36}/confirm)"', plan)
        assert confirm
        started = await client.post(confirm.group(1), data={"csrf_token": csrf})
        assert started.status_code == 303 and started.headers["location"].endswith("/progress")

        async def replayed() -> str | None:
            text = (await client.get(started.headers["location"] + "/panel")).text
            return text if "replayed 3, skipped 0" in text else None

        progress = await eventually(replayed)
        assert 'id="count-pending">3<' in progress and 'id="count-dead">0<' in progress
    statuses = {r["id"]: r["status"] for r in await fetch(database, "SELECT id::text, status FROM webhook_events")}
    assert {i for i, s in statuses.items() if s == "pending"} == dead
    audit = await fetch(database, "SELECT action, detail FROM console_audit WHERE action LIKE 'bulk%' ORDER BY at")
    assert [a["action"] for a in audit] == ["bulk_preview", "bulk_replay"]
    assert set(audit[1]["detail"]["eventIds"]) == dead
