"""Contact sync both ways through the real ingress, NATS and PostgreSQL to the sandbox
vendors (spec/outbound.md §1.2–§1.5, §1.15)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.infra.db.session import sync_url
from tests.support.contacts import (  # noqa: F401
    ALOWARE_AUTH,
    aloware_contact,
    done,
    event_row,
    no_invalid_requests,
    send_aloware,
)
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline


async def test_aloware_contact_created_then_updated_reaches_ghl(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        created = await send_aloware(
            p, aloware_contact(1, timezone="America/New_York", disposition_status="Interested")
        )
        row = await eventually(lambda: done(clean_db, created["id"]))
        assert (row["status"], row["outcome"]) == ("done", "applied")
        [contact] = await p.ghl_contacts()
        assert (contact["firstName"], contact["lastName"], contact["phone"], contact["email"]) == (
            "Ada",
            "Person1",
            "+15555550001",
            "contact1@example.com",
        )
        assert contact["timezone"] == "America/New_York"
        assert contact["tags"] == ["interested"]

        later = datetime.now(UTC) + timedelta(seconds=5)
        updated = await send_aloware(p, aloware_contact(1, first="Adaline", updated_at=later, event="Contact Updated"))
        row = await eventually(lambda: done(clean_db, updated["id"]))
        assert row["outcome"] == "applied"
        [contact] = await p.ghl_contacts()
        assert contact["firstName"] == "Adaline"
        puts = [c for c in await p.calls("ghl") if c["method"] == "PUT"]
        assert puts and all("tags" not in c["body"] and "notes" not in c["body"] for c in puts)
        assert puts[-1]["body"] == {"firstName": "Adaline"}  # only the changed field
        # the GHL webhooks our writes caused were recognised as echoes: nothing went to Aloware
        assert await p.aloware_contacts() == []
        await no_invalid_requests(p)


async def test_ghl_contact_created_reaches_aloware_and_echo_does_not_come_back(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        # a person creates a contact in GHL: the fake GHL emits ContactCreate to the ingress
        response = await p.sandbox.post(
            "/ghl/contacts/",
            json={
                "locationId": settings.ghl_location_id,
                "firstName": "Grace",
                "lastName": "Sample",
                "phone": "+15555550102",
                "email": "grace@example.com",
            },
            headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
        )
        assert response.status_code == 201
        aloware = await eventually(p.aloware_contacts)
        assert [(a["first_name"], a["last_name"], a["phone_number"]) for a in aloware] == [
            ("Grace", "Sample", "+15555550102")
        ]

        async def settled() -> bool:
            conn = await asyncpg.connect(sync_url(clean_db))
            try:
                rows = await conn.fetch("SELECT source, status, outcome FROM webhook_events")
            finally:
                await conn.close()
            return len(rows) == 2 and all(r["status"] == "done" for r in rows)

        await eventually(settled)
        # Aloware's "Contact Created" webhook about our own write is an echo: no GHL write
        conn = await asyncpg.connect(sync_url(clean_db))
        try:
            echo = await conn.fetchrow("SELECT outcome, outcome_reason FROM webhook_events WHERE source='aloware'")
            mapping = await conn.fetchrow("SELECT * FROM contact_mappings")
        finally:
            await conn.close()
        assert (echo["outcome"], echo["outcome_reason"]) == ("echo", "middleware-originated")
        assert mapping["aloware_contact_id"] == aloware[0]["id"]
        ghl_writes = [c for c in await p.calls("ghl") if c["method"] in ("POST", "PUT") and c["path"] != "/contacts/"]
        assert ghl_writes == []
        assert len(await p.ghl_contacts()) == 1


async def test_human_edit_in_ghl_after_a_sync_is_not_mistaken_for_an_echo(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        first = await send_aloware(p, aloware_contact(3))
        await eventually(lambda: done(clean_db, first["id"]))
        [contact] = await p.ghl_contacts()
        edit = await p.sandbox.put(
            f"/ghl/contacts/{contact['id']}",
            json={"city": "Shelbyville"},
            headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
        )
        assert edit.status_code == 200

        async def aloware_has_city() -> bool:
            return any(a.get("city") == "Shelbyville" for a in await p.aloware_contacts())

        await eventually(aloware_has_city)
        await no_invalid_requests(p)


@pytest.mark.slow
async def test_concurrent_replicas_converge_without_duplicates(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    # Aloware is the source of truth here so every newer event must win (in `merge` mode
    # GHL's value or the longer name wins, spec §1.5, which is not what this test is about).
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="aloware")
    rng = random.Random(7)
    base = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    newest: dict[int, str] = {}
    for contact in range(20):
        for version in range(10):
            name = f"C{contact}v{version}"
            events.append(
                aloware_contact(
                    100 + contact, first=name, event="Contact Updated", updated_at=base + timedelta(seconds=version)
                )
            )
        newest[100 + contact] = f"C{contact}v9"
    deliveries = events * 2  # every event delivered twice
    rng.shuffle(deliveries)
    async with running_pipeline(settings, replicas=3) as p:
        answers = await asyncio.gather(*(send_aloware(p, e) for e in deliveries))
        assert len({a["id"] for a in answers if a["status"] == "accepted"}) == 200

        async def all_done() -> bool:
            conn = await asyncpg.connect(sync_url(clean_db))
            try:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM webhook_events WHERE source='aloware' AND status <> 'done'"
                )
                total = await conn.fetchval("SELECT count(*) FROM webhook_events WHERE source='aloware'")
            finally:
                await conn.close()
            return total == 200 and pending == 0

        await eventually(all_done, timeout=180)
        metrics = __import__("prometheus_client").generate_latest().decode()
        assert 'dfm_events_echo_total{source="ghl"}' in metrics
        contacts = await p.ghl_contacts()
        assert len(contacts) == 20
        assert len({c["phone"] for c in contacts}) == 20
        by_phone = {c["phone"]: c for c in contacts}
        for n, name in newest.items():
            assert by_phone[f"+1555555{n:04d}"]["firstName"] == name
        # mode aloware: the upsert finds or creates the contact (spec §1.5), never a plain create
        writes = [
            c for c in await p.calls("ghl") if c["method"] == "POST" and c["path"] in ("/contacts/", "/contacts/upsert")
        ]
        assert writes and {c["path"] for c in writes} == {"/contacts/upsert"}
        await no_invalid_requests(p)
        conn = await asyncpg.connect(sync_url(clean_db))
        try:
            assert await conn.fetchval("SELECT count(*) FROM contact_mappings") == 20
        finally:
            await conn.close()


@pytest.mark.slow
async def test_vendor_5xx_and_429_are_retried_until_done(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await p.sandbox.post("/_sandbox/faults", json={"vendor": "ghl", "count": 3, "status": 503})
        await p.sandbox.post("/_sandbox/faults", json={"vendor": "ghl", "count": 2, "status": 429, "retry_after": 1})
        answer = await send_aloware(p, aloware_contact(5))
        row = await eventually(lambda: done(clean_db, answer["id"]), timeout=60)
        assert (row["status"], row["outcome"]) == ("done", "applied")
        assert row["attempts"] >= 2
        assert len(await p.ghl_contacts()) == 1


async def test_invalid_payload_is_dead_with_a_reason_and_neighbours_flow(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        poison = await send_aloware(p, {"event": "Contact Updated", "body": {"id": "999", "tags": 5}})
        good = await send_aloware(p, aloware_contact(6))
        bad_row = await eventually(lambda: done(clean_db, poison["id"]))
        good_row = await eventually(lambda: done(clean_db, good["id"]))
        assert bad_row["status"] == "dead"
        assert "invalid Aloware contact payload" in bad_row["error_message"]
        assert good_row["outcome"] == "applied"


@pytest.mark.slow
async def test_replicas_share_the_rate_budget_and_never_hit_429(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    # a scaled-down GHL: 10 requests per 2 s at the fake, 8 per 2 s in our shared budget
    settings = pipeline_settings(base_env, tmp_path, GHL_RATE_LIMIT_PER_10S="8")
    async with running_pipeline(settings, replicas=3, window_s=2) as p:
        await p.sandbox.post("/_sandbox/rate-limit", json={"per_10s": 10, "window_s": 2})
        answers = [await send_aloware(p, aloware_contact(200 + n)) for n in range(12)]
        for answer in answers:
            await eventually(lambda a=answer: done(clean_db, a["id"]), timeout=90)
        assert len(await p.ghl_contacts()) == 12
        assert [c for c in await p.calls("ghl") if c["status"] == 429] == []


async def test_ghl_contact_deleted_takes_the_aloware_contact_off_every_list(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        first = await send_aloware(p, aloware_contact(7))
        await eventually(lambda: done(clean_db, first["id"]))
        [contact] = await p.ghl_contacts()
        # the GHL webhook of our create made aloware-sync look the contact up; now delete it
        deleted = await p.sandbox.delete(
            f"/ghl/contacts/{contact['id']}",
            headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
        )
        assert deleted.status_code == 200

        async def removal_sent() -> list[dict[str, Any]]:
            return [
                c for c in await p.calls("aloware") if c["path"] == "/webhook/powerdialer-remove-contact-from-lists"
            ]

        [call] = await eventually(removal_sent)
        assert call["body"]["contact_id"] == "8000007"
        conn = await asyncpg.connect(sync_url(clean_db))
        try:
            deleted_at = await eventually(
                lambda: conn.fetchval(
                    "SELECT ghl_deleted_at FROM contact_mappings WHERE ghl_contact_id = $1", contact["id"]
                )
            )
        finally:
            await conn.close()
        assert deleted_at is not None


async def test_update_after_the_ghl_contact_was_deleted_recreates_it_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="aloware")
    async with running_pipeline(settings) as p:
        first = await send_aloware(p, aloware_contact(8))
        await eventually(lambda: done(clean_db, first["id"]))
        [contact] = await p.ghl_contacts()
        await p.sandbox.delete(
            f"/ghl/contacts/{contact['id']}",
            headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
        )
        later = datetime.now(UTC) + timedelta(seconds=5)
        update = await send_aloware(p, aloware_contact(8, first="Again", updated_at=later, event="Contact Updated"))
        row = await eventually(lambda: done(clean_db, update["id"]))
        assert row["outcome"] == "applied"
        [recreated] = await p.ghl_contacts()
        assert recreated["id"] != contact["id"] and recreated["firstName"] == "Again"


async def test_an_event_that_keeps_failing_ends_dead_after_its_retry_budget(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, RETRY_MAX_ATTEMPTS="3")
    async with running_pipeline(settings) as p:
        await p.sandbox.post("/_sandbox/faults", json={"vendor": "ghl", "count": 1000, "status": 502})
        answer = await send_aloware(p, aloware_contact(9))
        row = await eventually(lambda: done(clean_db, answer["id"]), timeout=60)
        assert (row["status"], row["attempts"]) == ("dead", 3)
        assert row["error_message"].startswith("retry budget spent: ghl 502")
        conn = await asyncpg.connect(sync_url(clean_db))
        try:
            delivery = await conn.fetchrow("SELECT status, attempts, last_error FROM event_deliveries")
        finally:
            await conn.close()
        assert (delivery["status"], delivery["attempts"]) == ("dead", 3)


async def test_t13_a_429_with_no_remaining_budget_waits_the_advertised_interval(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """T13: GHL answers 429 with ``X-RateLimit-Remaining: 0`` and a 10 000 ms interval: the
    event is delayed (NAK) at least 10 s, not failed, then done."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await p.sandbox.post(
            "/_sandbox/faults",
            json={
                "vendor": "ghl",
                "count": 1,
                "status": 429,
                "path_contains": "/contacts/",  # the create, the first request of a new contact
                "headers": {"X-RateLimit-Remaining": "0", "X-RateLimit-Interval-Milliseconds": "10000"},
            },
        )
        answer = await send_aloware(p, aloware_contact(13))
        row = await eventually(lambda: done(clean_db, answer["id"]), timeout=40)
        assert row["status"] == "done" and row["outcome"] == "applied"
        calls = [c for c in await p.calls("ghl") if c["path"] == "/contacts/"]
        assert calls[0]["status"] == 429 and calls[1]["status"] == 201
        assert calls[1]["at"] - calls[0]["at"] >= 10.0  # waited the advertised interval
        conn = await asyncpg.connect(sync_url(clean_db))
        try:
            [delivery] = await conn.fetch(
                "SELECT attempts FROM event_deliveries WHERE event_id = $1::uuid AND consumer = 'ghl-sync'",
                answer["id"],
            )
        finally:
            await conn.close()
        assert delivery["attempts"] == 2  # GHL's own 429 costs an attempt (only our budget's waits do not)


async def test_t3_a_duplicate_answer_on_create_continues_as_an_update(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """T3: the create answers 400 duplicate with ``meta.contactId`` (the location refuses
    duplicates, so the create itself is the duplicate check, no search runs before it): that
    contact is updated with the merge, none is created."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        # in the location before the middleware ran (no webhook: aloware-sync must not race
        # ghl-sync for it, creating an Aloware contact of its own that ghl-sync then conflicts with)
        existing = await p.sandbox.post(
            "/_sandbox/ghl/contacts",
            json={"locationId": settings.ghl_location_id, "firstName": "Old", "phone": "+15555550033"},
        )
        ghl_id = existing.json()["id"]
        answer = await send_aloware(p, aloware_contact(33, first="New"))
        row = await eventually(lambda: done(clean_db, answer["id"]))
        assert row["outcome"] == "applied"
        [contact] = await p.ghl_contacts()
        assert contact["id"] == ghl_id and contact["firstName"] == "New"
        writes = [
            (c["method"], c["path"], c["status"])
            for c in await p.calls("ghl")
            if c["method"] in ("POST", "PUT") and "/search" not in c["path"]
        ]
        assert writes[-2:] == [("POST", "/contacts/", 400), ("PUT", f"/contacts/{ghl_id}", 200)]
        conn = await asyncpg.connect(sync_url(clean_db))
        try:
            mapping = await conn.fetchrow(
                "SELECT ghl_contact_id FROM contact_mappings WHERE aloware_contact_id = '8000033'"
            )
        finally:
            await conn.close()
        assert mapping["ghl_contact_id"] == ghl_id
