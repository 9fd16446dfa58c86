"""Aloware → GHL updates never skip a real difference because our copy of the GHL contact
is stale (issue #16 items 5 and 6, spec/outbound.md CA-2, CA-4, CA-6, R-1), through the
real ingress, NATS, PostgreSQL and the sandbox vendors.

CA diffs against the GHL snapshot kept with the mapping, so a fresh snapshot costs no GHL
read; these tests make it stale the ways production does (a GHL webhook lost, the
GHL → Aloware direction switched off, a contact without phone) and check that the real
difference is written at the cost of one read, that a change a write reveals reaches
Aloware, that reconciliation reads GHL and compares it with Aloware rather than with our
copy, and that the Aloware custom fields are written on update and on a duplicate match.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from contracts.commands import ReconcileRequested
from tests.conftest import load_fixture
from tests.support.contacts import aloware_contact, done, no_invalid_requests, send_aloware, settled
from tests.support.jobs_rig import fetch, running_jobs
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

GHL_HEADERS = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}
CUSTOM_FIELD_IDS = {
    "GHL_CF_ALOWARE_CONTACT_ID": "cfAlowareId",
    "GHL_CF_LEAD_SOURCE": "cfLeadSource",
    "GHL_CF_INTAKE_SOURCE": "cfIntakeSource",
}


async def contact_reads(p: Pipeline, ghl_id: str) -> list[dict[str, Any]]:
    """GHL ``GET /contacts/{id}`` calls the sandbox recorded for the contact."""
    return [c for c in await p.calls("ghl") if c["method"] == "GET" and c["path"] == f"/contacts/{ghl_id}"]


async def ghl_call_count(p: Pipeline) -> int:
    return len(await p.calls("ghl"))


async def contact_calls_since(p: Pipeline, ghl_id: str, since: int) -> list[str]:
    """The methods of GHL's ``/contacts/{id}`` calls after the first ``since`` GHL calls, in
    order (reads and writes of CA, then whatever CG does about the webhook they caused)."""
    return [c["method"] for c in (await p.calls("ghl"))[since:] if c["path"] == f"/contacts/{ghl_id}"]


async def contact_and_sub_calls_since(p: Pipeline, ghl_id: str, since: int) -> list[str]:
    """``contact_calls_since`` with the contact's notes and tags calls too (``/contacts/{id}/…``)."""
    return [c["method"] for c in (await p.calls("ghl"))[since:] if c["path"].startswith(f"/contacts/{ghl_id}")]


async def puts(p: Pipeline, ghl_id: str) -> list[dict[str, Any]]:
    return [c for c in await p.calls("ghl") if c["method"] == "PUT" and c["path"] == f"/contacts/{ghl_id}"]


async def ghl_contact(p: Pipeline, ghl_id: str) -> dict[str, Any]:
    [contact] = [c for c in await p.ghl_contacts() if c["id"] == ghl_id]
    return contact


async def ghl_event_done(db: str, ghl_id: str, canonical_type: str, n: int = 1) -> bool:
    """GHL's ``n``-th webhook of this kind about the contact has been recorded and finished
    (GHL sends webhooks after answering, so "every event done" alone can be too early)."""
    rows = await fetch(
        db,
        "SELECT count(*) AS n FROM webhook_events WHERE source = 'ghl' AND entity_id = $1 "
        "AND canonical_type = $2 AND status IN ('done', 'dead')",
        ghl_id,
        canonical_type,
    )
    return rows[0]["n"] >= n


async def synced_from_aloware(p: Pipeline, db: str, n: int, **fields: Any) -> str:
    """An Aloware contact created through the ingress; its GHL id once everything settled."""
    created = await send_aloware(p, aloware_contact(n, **fields))
    row = await eventually(lambda: done(db, created["id"]))
    assert row["outcome"] == "applied", row
    [mapping] = await fetch(
        db, "SELECT ghl_contact_id FROM contact_mappings WHERE aloware_contact_id = $1", str(8_000_000 + n)
    )
    ghl_id = str(mapping["ghl_contact_id"])
    await eventually(lambda: ghl_event_done(db, ghl_id, "contact.created"))
    await eventually(lambda: settled(p, db))
    return ghl_id


async def aloware_update(p: Pipeline, db: str, n: int, **fields: Any) -> dict[str, Any]:
    """A later Aloware ``Contact Updated`` webhook for contact ``n``; its finished event row."""
    later = datetime.now(UTC) + timedelta(seconds=5)
    answer = await send_aloware(p, aloware_contact(n, updated_at=later, event="Contact Updated", **fields))
    row = await eventually(lambda: done(db, answer["id"]))
    assert row["status"] == "done", row
    return row


async def synced_longer_ago_than(db: str, ghl_id: str, seconds: float) -> bool:
    """The mapping (and the GHL snapshot written with it) is older than ``seconds``, by
    PostgreSQL's clock."""
    rows = await fetch(
        db,
        "SELECT now() - last_synced_at > make_interval(secs => $2) AS old "
        "FROM contact_mappings WHERE ghl_contact_id = $1",
        ghl_id,
        seconds,
    )
    return bool(rows and rows[0]["old"])


async def aloware_form(p: Pipeline, **fields: Any) -> None:
    """A person saves a contact in Aloware: the sandbox's Lead API, which sends Aloware's webhook."""
    answer = await p.sandbox.post(
        "/aloware/api/v1/webhook/forms", json={"api_token": "sandbox-aloware-token", **fields}
    )
    assert answer.status_code == 200, answer.text


async def aloware_record(p: Pipeline, phone: str) -> dict[str, Any] | None:
    return next((c for c in await p.aloware_contacts() if c["phone_number"] == phone), None)


# --- the common case keeps its saving -----------------------------------------------------


async def test_a_fresh_snapshot_costs_no_ghl_read(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        ghl_id = await synced_from_aloware(p, clean_db, 1)
        since = await ghl_call_count(p)
        row = await aloware_update(p, clean_db, 1, first="Adaline")
        assert row["outcome"] == "applied"
        assert (await ghl_contact(p, ghl_id))["firstName"] == "Adaline"
        assert [c["body"] for c in await puts(p, ghl_id)] == [{"firstName": "Adaline"}]
        await eventually(lambda: settled(p, clean_db))
        # diffed against the snapshot: no read before the write (the list rules may read after it)
        assert (await contact_calls_since(p, ghl_id, since))[:1] == ["PUT"]
        await no_invalid_requests(p)


def aloware_call(n: int, call_id: str, disposition: str = "Interested") -> dict[str, Any]:
    """Aloware's ``Call Disposed`` for contact ``n`` (``aloware_contact(n)``)."""
    body = load_fixture("aloware/call-disposed.json")["body"]
    contact = str(8_000_000 + n)
    return {
        "event": "Call Disposed",
        "body": {
            **body,
            "id": call_id,
            "contact_id": contact,
            "lead_number": f"+1555555{n:04d}",
            "disposition": disposition,
        },
    }


async def snapshot_tags(db: str, ghl_id: str) -> list[str]:
    [row] = await fetch(
        db, "SELECT ghl_snapshot->'tags' AS tags FROM contact_mappings WHERE ghl_contact_id = $1", ghl_id
    )
    return sorted(json.loads(row["tags"]))


async def test_call_tags_on_a_fresh_snapshot_cost_no_ghl_read_and_a_tag_present_is_verified(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """LP-2 from the snapshot (issue #18 item 1): a call's tags the fresh snapshot lacks are
    added without reading the contact, and the snapshot then holds them; a call whose tags
    the snapshot already has reads GHL before it writes nothing (a snapshot never spares a
    write), so a tag removed in GHL whose webhook was lost is added again; and when the
    snapshot lacks one wanted tag, all of them are sent (one it wrongly holds is added too)."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        ghl_id = await synced_from_aloware(p, clean_db, 11)
        since = await ghl_call_count(p)
        first = await send_aloware(p, aloware_call(11, "9110001"))
        assert (await eventually(lambda: done(clean_db, first["id"])))["outcome"] == "applied"
        assert await contact_and_sub_calls_since(p, ghl_id, since) == [
            "POST",  # the note
            "POST",  # the tags: no GET before them
        ]
        assert sorted((await ghl_contact(p, ghl_id))["tags"]) == ["call: interested", "outbound call"]
        assert await snapshot_tags(clean_db, ghl_id) == ["call: interested", "outbound call"]
        await eventually(lambda: ghl_event_done(clean_db, ghl_id, "contact.tags_changed"))
        await eventually(lambda: settled(p, clean_db))

        # the same tags again: the snapshot has them, so GHL is read, and nothing is written
        since = await ghl_call_count(p)
        second = await send_aloware(p, aloware_call(11, "9110002"))
        assert (await eventually(lambda: done(clean_db, second["id"])))["outcome"] == "applied"  # its note
        assert await contact_and_sub_calls_since(p, ghl_id, since) == [
            "POST",  # the note
            "GET",  # the tags present in the snapshot: verified, none added
        ]
        await eventually(lambda: settled(p, clean_db))

        # a person removes a tag in GHL and its webhook is lost: the snapshot still has it, so
        # the next call reads GHL, finds it missing and adds it again
        edit = await p.sandbox.patch(f"/_sandbox/ghl/contacts/{ghl_id}", json={"tags": ["call: interested"]})
        assert edit.status_code == 200
        since = await ghl_call_count(p)
        third = await send_aloware(p, aloware_call(11, "9110003"))
        assert (await eventually(lambda: done(clean_db, third["id"])))["outcome"] == "applied"
        assert (await contact_and_sub_calls_since(p, ghl_id, since))[:3] == ["POST", "GET", "POST"]
        assert sorted((await ghl_contact(p, ghl_id))["tags"]) == ["call: interested", "outbound call"]
        await eventually(lambda: settled(p, clean_db))

        # lost again, and the next call wants a tag the snapshot lacks besides: no read, and
        # every wanted tag is sent, so the one the snapshot wrongly believes present is back too
        edit = await p.sandbox.patch(f"/_sandbox/ghl/contacts/{ghl_id}", json={"tags": ["call: interested"]})
        assert edit.status_code == 200
        since = await ghl_call_count(p)
        fourth = await send_aloware(p, aloware_call(11, "9110004", disposition="Callback"))
        assert (await eventually(lambda: done(clean_db, fourth["id"])))["outcome"] == "applied"
        assert await contact_and_sub_calls_since(p, ghl_id, since) == ["POST", "POST"]
        assert sorted((await ghl_contact(p, ghl_id))["tags"]) == ["call: callback", "call: interested", "outbound call"]
        assert await snapshot_tags(clean_db, ghl_id) == ["call: callback", "call: interested", "outbound call"]
        await no_invalid_requests(p)


# --- a stale snapshot costs exactly one read and the real difference is written ----------


async def test_a_missed_ghl_webhook_is_caught_once_the_snapshot_is_older_than_the_bound(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """GHL lost the webhook of a person's edit; the Aloware update carries the value our
    stale snapshot still has, which differs from GHL's: past GHL_SNAPSHOT_MAX_AGE_S the
    snapshot is verified (one GET) and Aloware's value (source of truth here) is written."""
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="aloware", GHL_SNAPSHOT_MAX_AGE_S="1")
    async with running_pipeline(settings) as p:
        ghl_id = await synced_from_aloware(p, clean_db, 2)
        edit = await p.sandbox.patch(f"/_sandbox/ghl/contacts/{ghl_id}", json={"firstName": "Grace"})
        assert edit.status_code == 200  # no webhook: GHL lost it
        await eventually(lambda: synced_longer_ago_than(clean_db, ghl_id, 1.2))
        since = await ghl_call_count(p)
        row = await aloware_update(p, clean_db, 2)  # first name "Ada", as in our stale copy
        assert (row["outcome"], row["outcome_reason"]) == ("applied", None)
        assert (await ghl_contact(p, ghl_id))["firstName"] == "Ada"
        assert (await puts(p, ghl_id))[-1]["body"] == {"firstName": "Ada"}
        assert (await contact_calls_since(p, ghl_id, since))[:2] == ["GET", "PUT"]  # exactly one read
        await no_invalid_requests(p)


async def test_with_ghl_to_aloware_sync_off_the_snapshot_is_verified_before_it_is_trusted(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """SYNC_GHL_CONTACTS_TO_ALOWARE=false: GHL's webhooks arrive but nothing refreshes our
    copy from them, so a person's edit in GHL must not make Aloware's update a no-op."""
    settings = pipeline_settings(
        base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="aloware", SYNC_GHL_CONTACTS_TO_ALOWARE="false"
    )
    async with running_pipeline(settings) as p:
        ghl_id = await synced_from_aloware(p, clean_db, 3)
        edit = await p.sandbox.put(f"/ghl/contacts/{ghl_id}", json={"firstName": "Grace"}, headers=GHL_HEADERS)
        assert edit.status_code == 200  # GHL sends ContactUpdate; the CG direction is off
        await eventually(lambda: ghl_event_done(clean_db, ghl_id, "contact.updated"))
        await eventually(lambda: settled(p, clean_db))
        since = await ghl_call_count(p)
        row = await aloware_update(p, clean_db, 3)
        assert row["outcome"] == "applied"
        assert (await ghl_contact(p, ghl_id))["firstName"] == "Ada"
        assert (await contact_calls_since(p, ghl_id, since))[:2] == ["GET", "PUT"]
        await no_invalid_requests(p)


async def test_a_contact_without_phone_is_verified_before_its_snapshot_is_trusted(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """CG skips a GHL contact without phone (CG-2) and so never refreshes our copy of it."""
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="aloware")
    async with running_pipeline(settings) as p:
        ghl_id = await synced_from_aloware(p, clean_db, 4, phone_number="")
        assert "phone" not in await ghl_contact(p, ghl_id)
        edit = await p.sandbox.put(f"/ghl/contacts/{ghl_id}", json={"lastName": "Renamed"}, headers=GHL_HEADERS)
        assert edit.status_code == 200
        await eventually(lambda: ghl_event_done(clean_db, ghl_id, "contact.updated"))
        await eventually(lambda: settled(p, clean_db))
        row = await aloware_update(p, clean_db, 4, phone_number="")
        assert row["outcome"] == "applied"
        assert (await ghl_contact(p, ghl_id))["lastName"] == "Person4"
        await no_invalid_requests(p)


# --- what a write response reveals ---------------------------------------------------------


async def test_a_missed_change_our_write_reveals_is_corrected_without_a_read(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Within the age bound GHL lost a webhook; the update writes another field and GHL's
    answer shows the missed change: CA plans again from that answer (Aloware wins here)."""
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="aloware")
    async with running_pipeline(settings) as p:
        ghl_id = await synced_from_aloware(p, clean_db, 5)
        assert (
            await p.sandbox.patch(f"/_sandbox/ghl/contacts/{ghl_id}", json={"lastName": "Other"})
        ).status_code == 200
        since = await ghl_call_count(p)
        row = await aloware_update(p, clean_db, 5, city="Shelbyville")
        assert row["outcome"] == "applied"
        contact = await ghl_contact(p, ghl_id)
        assert (contact["city"], contact["lastName"]) == ("Shelbyville", "Person5")
        assert [c["body"] for c in await puts(p, ghl_id)][-2:] == [{"city": "Shelbyville"}, {"lastName": "Person5"}]
        assert (await contact_calls_since(p, ghl_id, since))[:2] == ["PUT", "PUT"]  # the answer was the read
        await no_invalid_requests(p)


async def test_a_missed_ghl_change_our_write_reveals_still_reaches_aloware(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Default merge mode: a person's GHL edit whose webhook was lost shows up in the answer
    to our next write. That write's webhook is not taken for a pure echo of ours, so CG
    carries the person's change to Aloware (before, the echo guard swallowed it for good)."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        phone = "+15555560006"
        await aloware_form(
            p,
            phone_number=phone,
            first_name="Ada",
            last_name="Person6",
            email="contact6@example.com",
            city="Springfield",
        )
        [mapping] = await eventually(lambda: fetch(clean_db, "SELECT ghl_contact_id FROM contact_mappings"))
        ghl_id = mapping["ghl_contact_id"]
        await eventually(lambda: ghl_event_done(clean_db, ghl_id, "contact.created"))
        await eventually(lambda: settled(p, clean_db))
        assert (
            await p.sandbox.patch(f"/_sandbox/ghl/contacts/{ghl_id}", json={"city": "Shelbyville"})
        ).status_code == 200
        await aloware_form(p, phone_number=phone, first_name="Adaline", force_update=True)

        async def aloware_has_the_city() -> bool:
            record = await aloware_record(p, phone)
            return record is not None and record.get("city") == "Shelbyville"

        await eventually(aloware_has_the_city)
        await eventually(lambda: settled(p, clean_db))
        contact = await ghl_contact(p, ghl_id)
        assert (contact["firstName"], contact["city"]) == ("Adaline", "Shelbyville")
        assert (await aloware_record(p, phone) or {}).get("first_name") == "Adaline"
        await no_invalid_requests(p)


# --- reconciliation reads GHL and compares it with Aloware --------------------------------


async def test_reconciliation_reads_ghl_and_finds_drift_our_copy_would_miss(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Our snapshot equals GHL, but Aloware lost the value (changed there without a
    webhook): R-1 reads every mapped contact from GHL, compares it with Aloware (CG's plan)
    and repairs through the normal rule; a second run finds nothing left to do."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        created = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL_HEADERS,
            json={
                "locationId": settings.ghl_location_id,
                "firstName": "Rita",
                "lastName": "Sample",
                "phone": "+15555560007",
                "city": "Springfield",
            },
        )
        assert created.status_code == 201
        ghl_id = created.json()["contact"]["id"]
        record = await eventually(lambda: aloware_record(p, "+15555560007"))
        await eventually(lambda: ghl_event_done(clean_db, ghl_id, "contact.created"))
        await eventually(lambda: settled(p, clean_db))
        silently = await p.sandbox.patch(f"/_sandbox/aloware/contacts/{record['id']}", json={"city": "Elsewhere"})
        assert silently.status_code == 200
        reads = len(await contact_reads(p, ghl_id))

        totals = await jobs.execute(ReconcileRequested())
        assert len(await contact_reads(p, ghl_id)) > reads  # R-1 read GHL, not our copy
        assert totals == {"driftCount": 0, "repairsCount": 1, "errors": 0, "totalProcessed": 1}

        async def aloware_repaired() -> bool:
            return ((await aloware_record(p, "+15555560007")) or {}).get("city") == "Springfield"

        await eventually(aloware_repaired)
        await eventually(lambda: settled(p, clean_db))
        again = await jobs.execute(ReconcileRequested())
        assert again == {"driftCount": 0, "repairsCount": 0, "errors": 0, "totalProcessed": 1}
        await no_invalid_requests(p)


# --- CA-6: the Aloware custom fields ------------------------------------------------------


def _custom(contact: dict[str, Any]) -> dict[str, Any]:
    return {f["id"]: f.get("value") for f in contact.get("customFields") or []}


async def test_aloware_fields_are_written_on_update(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    """A contact a person created in GHL (synced to Aloware by CG) gets the Aloware custom
    fields on Aloware's next update, not only contacts CA created."""
    settings = pipeline_settings(base_env, tmp_path, **CUSTOM_FIELD_IDS)
    async with running_pipeline(settings) as p:
        created = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL_HEADERS,
            json={
                "locationId": settings.ghl_location_id,
                "firstName": "Bo",
                "lastName": "Sample",
                "phone": "+15555560008",
            },
        )
        ghl_id = created.json()["contact"]["id"]
        record = await eventually(lambda: aloware_record(p, "+15555560008"))
        await eventually(lambda: ghl_event_done(clean_db, ghl_id, "contact.created"))
        await eventually(lambda: settled(p, clean_db))
        assert _custom(await ghl_contact(p, ghl_id)) == {}
        await aloware_form(
            p,
            phone_number="+15555560008",
            first_name="Bobby",
            lead_source="Facebook",
            intake_source="web",
            force_update=True,
        )

        async def custom_fields_written() -> dict[str, Any]:
            return _custom(await ghl_contact(p, ghl_id))

        fields = await eventually(custom_fields_written)
        assert fields == {"cfAlowareId": record["id"], "cfLeadSource": "Facebook", "cfIntakeSource": "web"}
        await eventually(lambda: settled(p, clean_db))
        assert (await ghl_contact(p, ghl_id))["firstName"] == "Bobby"
        await no_invalid_requests(p)


async def test_aloware_fields_are_written_on_a_contact_found_by_duplicate_search(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """No mapping yet, GHL's duplicate search finds the contact and every scalar field
    already agrees: the custom fields are still written."""
    settings = pipeline_settings(base_env, tmp_path, SYNC_GHL_CONTACTS_TO_ALOWARE="false", **CUSTOM_FIELD_IDS)
    async with running_pipeline(settings) as p:
        payload = aloware_contact(9, lead_source="Referral", intake_source="phone")
        body = payload["body"]
        created = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL_HEADERS,
            json={
                "locationId": settings.ghl_location_id,
                "firstName": body["first_name"],
                "lastName": body["last_name"],
                "phone": body["phone_number"],
                "email": body["email"],
                "timezone": body["timezone"],
                "country": body["country"],
                "state": body["state"],
                "city": body["city"],
            },
        )
        ghl_id = created.json()["contact"]["id"]
        await eventually(lambda: ghl_event_done(clean_db, ghl_id, "contact.created"))
        answer = await send_aloware(p, payload)
        row = await eventually(lambda: done(clean_db, answer["id"]))
        assert row["outcome"] == "applied", row
        assert len(await p.ghl_contacts()) == 1
        assert _custom(await ghl_contact(p, ghl_id)) == {
            "cfAlowareId": "8000009",
            "cfLeadSource": "Referral",
            "cfIntakeSource": "phone",
        }
        assert [sorted(c["body"]) for c in await puts(p, ghl_id)] == [["customFields"]]
        await no_invalid_requests(p)
