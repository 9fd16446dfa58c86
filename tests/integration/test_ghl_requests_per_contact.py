"""GHL requests per effect of the CA rule (issue #18, spec/outbound.md §1.2, §1.5): GHL
allows 100 requests / 10 s per location, so the requests a synced contact costs are the
production ceiling. Through the real ingress, NATS, PostgreSQL and the sandbox GHL, counted
from the sandbox's request log (``/_sandbox/calls?vendor=ghl``, every ghl-sync, aloware-sync
and verity-sync request included):

* a burst of new Aloware contacts costs ≤ 1.1 GHL requests each (mode ``merge``: the create
  is GHL's duplicate check while the location refuses duplicates; ``aloware``: the upsert);
* a contact GHL already has keeps, per mode, the GHL values the merge keeps;
* an update of a contact with a fresh snapshot costs one request, and five queued updates of
  one contact are one GHL write with the last values (coalescing).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.infra.settings import Settings
from tests.support.contacts import aloware_contact, done, no_invalid_requests, send_aloware, settled
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import Pipeline, consumers, eventually, pipeline_settings, running_pipeline

GHL_HEADERS = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}
BURST = 50


def without_consumers(settings: Settings) -> AbstractAsyncContextManager[Pipeline]:
    """Sandbox vendors, recorder and ingress, but no sync consumer: events queue on the stream
    and in the ledger until the test starts ``consumers``."""
    return running_pipeline(settings, replicas=0)


async def recorded(db: str, n: int) -> bool:
    return len(await fetch(db, "SELECT id FROM webhook_events WHERE source = 'aloware'")) >= n


async def ghl_contact(p: Pipeline, ghl_id: str) -> dict[str, Any]:
    return next(c for c in await p.ghl_contacts() if c["id"] == ghl_id)


async def synced(p: Pipeline, db: str, n: int, **fields: Any) -> str:
    """Aloware contact ``n`` synced to GHL and every echo of it settled; its GHL id."""
    answer = await send_aloware(p, aloware_contact(n, **fields))
    row = await eventually(lambda: done(db, answer["id"]))
    assert row["outcome"] == "applied", row
    await eventually(lambda: settled(p, db))
    [mapping] = await fetch(
        db, "SELECT ghl_contact_id FROM contact_mappings WHERE aloware_contact_id = $1", str(8_000_000 + n)
    )
    return str(mapping["ghl_contact_id"])


# --- new contacts -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["merge", "aloware"])
async def test_a_burst_of_new_contacts_costs_at_most_1_1_ghl_requests_each(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, mode: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH=mode)
    async with running_pipeline(settings) as p:
        answers = await asyncio.gather(*(send_aloware(p, aloware_contact(n)) for n in range(BURST)))
        for answer in answers:
            row = await eventually(lambda a=answer: done(clean_db, a["id"]), timeout=60)
            assert row["outcome"] == "applied", row
        await eventually(lambda: settled(p, clean_db, BURST), timeout=60)
        contacts = await p.ghl_contacts()
        assert len(contacts) == BURST
        assert {c["phone"] for c in contacts} == {f"+1555555{n:04d}" for n in range(BURST)}
        calls = await p.calls("ghl")
        per_contact = len(calls) / BURST
        kinds = Counter(
            f"{c['method']} {'/contacts/{id}' if c['path'].startswith('/contacts/sbx') else c['path']}" for c in calls
        )
        print(
            f"mode {mode}: {len(calls)} GHL requests for {BURST} new contacts = {per_contact:.2f} each; {dict(kinds)}"
        )
        assert per_contact <= 1.1, kinds
        await no_invalid_requests(p)


async def test_the_echo_of_a_create_still_being_recorded_is_recognised_without_a_ghl_read(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """GHL's ContactCreate webhook for a contact ghl-sync just created can reach aloware-sync
    before ghl-sync has recorded the write (here forced: ghl-sync pauses after the create,
    holding the contact's lock, before its echo record). aloware-sync waits for that lock and
    finds the echo on the body: no ``GET /contacts/{id}`` (under load that race cost bursts
    ~0.1 GHL request per new contact)."""
    settings = pipeline_settings(base_env, tmp_path, DFM_FAULT_PAUSE_AFTER_VENDOR_WRITE_S="1")
    async with running_pipeline(settings) as p:
        answer = await send_aloware(p, aloware_contact(5))
        row = await eventually(lambda: done(clean_db, answer["id"]))
        assert row["outcome"] == "applied", row
        await eventually(lambda: settled(p, clean_db, 2))
        [echo] = await fetch(
            clean_db,
            "SELECT d.status, d.outcome FROM event_deliveries d JOIN webhook_events e ON e.id = d.event_id "
            "WHERE e.source = 'ghl' AND d.consumer = 'aloware-sync'",
        )
        assert (echo["status"], echo["outcome"]) == ("done", "echo")
        reads = [c["path"] for c in await p.calls("ghl") if c["method"] == "GET" and c["path"].startswith("/contacts/")]
        assert reads == []


@pytest.mark.parametrize(("ignores", "reads"), [("true", 0), ("false", 2)], ids=["default", "read_back"])
async def test_the_echo_of_a_write_is_recognised_from_ghls_webhook_which_carries_no_timezone(
    ignores: str, reads: int, base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """GHL's contact webhooks leave the timezone out (tests/fixtures/webhooks/ghl) though the
    contact we wrote has one (Aloware's): a GHL write is recorded with and without it, so the
    echo of our create and of our update is found on the body, with no ``GET /contacts/{id}``
    (a read per echo would cost as many GHL requests as the writes); with
    ``GHL_ECHO_IGNORES_TIMEZONE=false`` each is read back once and still found ours."""
    settings = pipeline_settings(base_env, tmp_path, GHL_ECHO_IGNORES_TIMEZONE=ignores)
    async with running_pipeline(settings) as p:
        created = await send_aloware(p, aloware_contact(6))
        assert created["id"]
        await eventually(lambda: settled(p, clean_db, 2))
        later = datetime.now(UTC) + timedelta(seconds=5)
        await send_aloware(p, aloware_contact(6, first="Adaline", updated_at=later, event="Contact Updated"))
        await eventually(lambda: settled(p, clean_db, 4))
        [contact] = await p.ghl_contacts()
        assert contact["timezone"] == "America/Los_Angeles"  # GHL has it...
        echoes = await fetch(
            clean_db,
            "SELECT e.payload_json ? 'timezone' AS shown, d.outcome FROM event_deliveries d "
            "JOIN webhook_events e ON e.id = d.event_id WHERE e.source = 'ghl' AND d.consumer = 'aloware-sync'",
        )
        assert [(e["shown"], e["outcome"]) for e in echoes] == [(False, "echo")] * 2  # ...its webhooks do not
        got = [c["path"] for c in await p.calls("ghl") if c["method"] == "GET" and c["path"].startswith("/contacts/")]
        assert got == [f"/contacts/{contact['id']}"] * reads


# --- contacts GHL already has keep their GHL values where the mode says so -----------------

EXISTING = {
    "firstName": "Grace",
    "lastName": "Hopper",
    "email": "grace@ghl.example",
    "phone": "+15555550077",
    "city": "Austin",
    "state": "TX",
    "tags": ["vip"],
}
# Aloware's side: a longer name, another e-mail and city, no state, a timezone GHL lacks
ALOWARE_SIDE = {
    "first_name": "Adaline",
    "last_name": "Lovelace-Byron",
    "email": "ada@aloware.example",
    "phone_number": "+15555550077",
    "city": "Dallas",
    "state": None,
    "timezone": "America/Chicago",
    "disposition_status": "Interested",
}
KEPT: dict[str, dict[str, Any]] = {
    # longer name wins as a pair; e-mail conflict keeps GHL; GHL's city; empty GHL timezone filled
    "merge": {
        "firstName": "Adaline",
        "lastName": "Lovelace-Byron",
        "email": "grace@ghl.example",
        "city": "Austin",
        "state": "TX",
        "timezone": "America/Chicago",
    },
    # only GHL's empty fields are filled
    "ghl": {
        "firstName": "Grace",
        "lastName": "Hopper",
        "email": "grace@ghl.example",
        "city": "Austin",
        "state": "TX",
        "timezone": "America/Chicago",
    },
    # Aloware's values overwrite GHL's; a value Aloware lacks stays
    "aloware": {
        "firstName": "Adaline",
        "lastName": "Lovelace-Byron",
        "email": "ada@aloware.example",
        "city": "Dallas",
        "state": "TX",
        "timezone": "America/Chicago",
    },
}


@pytest.mark.parametrize("mode", ["merge", "ghl", "aloware"])
async def test_a_contact_ghl_already_has_is_merged_per_mode_without_a_duplicate(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, mode: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH=mode, SYNC_GHL_CONTACTS_TO_ALOWARE="false")
    async with running_pipeline(settings) as p:
        made = await p.sandbox.post(
            "/ghl/contacts/", headers=GHL_HEADERS, json={"locationId": settings.ghl_location_id, **EXISTING}
        )
        assert made.status_code == 201, made.text
        ghl_id = made.json()["contact"]["id"]
        since = len(await p.calls("ghl"))
        answer = await send_aloware(p, aloware_contact(77, **ALOWARE_SIDE))
        row = await eventually(lambda: done(clean_db, answer["id"]))
        assert row["outcome"] == "applied", row
        [contact] = await p.ghl_contacts()  # no duplicate
        assert contact["id"] == ghl_id
        assert {k: contact.get(k) for k in KEPT[mode]} == KEPT[mode]
        assert sorted(contact["tags"]) == ["interested", "vip"]  # tags only ever added
        # the writes (reads of the webhook our setup's create caused interleave with ghl-sync's)
        writes = [c for c in (await p.calls("ghl"))[since:] if c["method"] in ("POST", "PUT", "DELETE")]
        assert not any("tags" in (c["body"] or {}) for c in writes if c["method"] == "PUT")
        if mode == "aloware":  # one upsert, then the disposition tag it lacked
            assert [(c["method"], c["path"]) for c in writes] == [
                ("POST", "/contacts/upsert"),
                ("POST", f"/contacts/{ghl_id}/tags"),
            ]
            assert "tags" not in writes[0]["body"]
        else:  # the create is the duplicate check: refused, the merge goes into the contact found
            assert [(c["method"], c["path"], c["status"]) for c in writes][:2] == [
                ("POST", "/contacts/", 400),
                ("PUT", f"/contacts/{ghl_id}", 200),
            ]
        await no_invalid_requests(p)


async def test_a_location_that_allows_duplicates_is_searched_before_a_create(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """With "Allow Duplicate Contact" on, GHL would create a second contact for the same
    phone: the duplicate search runs first and the existing contact is merged into."""
    settings = pipeline_settings(base_env, tmp_path, SYNC_GHL_CONTACTS_TO_ALOWARE="false")
    async with running_pipeline(settings) as p:
        setting = await p.sandbox.put(
            f"/ghl/locations/{settings.ghl_location_id}",
            headers=GHL_HEADERS,
            json={"companyId": "sandbox-company", "settings": {"allowDuplicateContact": True}},
        )
        assert setting.status_code == 200, setting.text
        made = await p.sandbox.post(
            "/ghl/contacts/", headers=GHL_HEADERS, json={"locationId": settings.ghl_location_id, **EXISTING}
        )
        ghl_id = made.json()["contact"]["id"]
        answer = await send_aloware(p, aloware_contact(77, **ALOWARE_SIDE))
        row = await eventually(lambda: done(clean_db, answer["id"]))
        assert row["outcome"] == "applied", row
        [contact] = await p.ghl_contacts()
        assert contact["id"] == ghl_id and contact["email"] == "grace@ghl.example"
        paths = [c["path"] for c in await p.calls("ghl")]
        assert "/contacts/search/duplicate" in paths and paths.count("/contacts/") == 1  # only our setup's
        await no_invalid_requests(p)


# --- updates --------------------------------------------------------------------------------


async def test_an_update_of_a_contact_with_a_fresh_snapshot_costs_one_request(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        ghl_id = await synced(p, clean_db, 1)
        since = len(await p.calls("ghl"))
        later = datetime.now(UTC) + timedelta(seconds=5)
        answer = await send_aloware(p, aloware_contact(1, first="Adaline", updated_at=later, event="Contact Updated"))
        row = await eventually(lambda: done(clean_db, answer["id"]))
        assert row["outcome"] == "applied"
        await eventually(lambda: settled(p, clean_db))
        calls = (await p.calls("ghl"))[since:]
        assert [(c["method"], c["path"], c["body"]) for c in calls] == [
            ("PUT", f"/contacts/{ghl_id}", {"firstName": "Adaline"})
        ]
        await no_invalid_requests(p)


async def test_five_queued_updates_of_one_contact_are_one_ghl_write_with_the_last_values(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    # one message at a time, in stream order, and Aloware's values always win (in merge mode a
    # name no longer than GHL's would not be written): without coalescing each update is a PUT
    settings = pipeline_settings(base_env, tmp_path, DB_MAX_CONNECTIONS="3", CONTACT_SOURCE_OF_TRUTH="aloware")
    async with without_consumers(settings) as p:
        async with consumers(settings, 1):
            ghl_id = await synced(p, clean_db, 5)
        since = len(await p.calls("ghl"))
        base = datetime.now(UTC) + timedelta(seconds=5)
        sent = [
            await send_aloware(
                p,
                aloware_contact(
                    5, first=f"Adaline{v}", updated_at=base + timedelta(seconds=v), event="Contact Updated"
                ),
            )
            for v in range(1, 6)
        ]
        await eventually(lambda: recorded(clean_db, 6))  # all five wait in the ledger
        async with consumers(settings, 1):
            for answer in sent:
                await eventually(lambda a=answer: done(clean_db, a["id"]))
            await eventually(lambda: settled(p, clean_db))
            calls = (await p.calls("ghl"))[since:]
        # ghl-sync's requests; aloware-sync's list rules may read the custom-field list
        # (GET /locations/{id}/customFields) about the webhook the PUT caused
        contact_calls = [c for c in calls if c["path"].startswith("/contacts")]
        assert [(c["method"], c["path"], c["body"]) for c in contact_calls] == [
            ("PUT", f"/contacts/{ghl_id}", {"firstName": "Adaline5"})
        ]
        assert (await ghl_contact(p, ghl_id))["firstName"] == "Adaline5"
        rows = [
            await fetch(clean_db, "SELECT outcome, outcome_reason FROM webhook_events WHERE id = $1::uuid", a["id"])
            for a in sent
        ]
        outcomes = [(r[0]["outcome"], r[0]["outcome_reason"]) for r in rows]
        assert outcomes[-1][0] == "applied"  # the newest is never the one skipped
        assert outcomes[:-1] == [("skipped", "superseded")] * 4, outcomes
        logged = await fetch(
            clean_db,
            "SELECT details FROM sync_log WHERE rule = 'CA' AND error_message = 'superseded' AND source_id = '8000005'",
        )
        assert len(logged) == 4 and all("superseded_by" in str(r["details"]) for r in logged)
        await no_invalid_requests(p)
