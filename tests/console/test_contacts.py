"""The contact page: one person found by phone (any national form), e-mail, GHL id or Aloware
id, with the mapping, the GHL snapshot, opt-out status and history, call lists per agent, and
the person's recent events and sync_log rows; "reconcile now" replays their newest events."""

from __future__ import annotations

import json
import re

import pytest

from tests.console.rig import console_client, console_settings, execute, fetch, insert_event, signed_in

PHONE = "+15550100001"


async def seed_person(database: str) -> dict[str, str]:
    snapshot = {
        "first_name": "Jane",
        "last_name": "Doe",
        "email": "jane.doe@example.com",
        "phone": PHONE,
        "timezone": None,
        "country": "US",
        "state": None,
        "city": "Austin",
        "tags": ["vip"],
        "custom_fields": {},
        "date_updated": None,
        "seen_at": "2026-12-01T10:00:00+00:00",
    }
    await execute(
        database,
        """
        INSERT INTO contact_mappings (aloware_contact_id, ghl_contact_id, phone_number, email, sync_direction,
                                      ghl_snapshot)
        VALUES ('alo-42', 'ghlContact0001', $1, 'jane.doe@example.com', 'bidirectional', $2::jsonb)""",
        PHONE,
        json.dumps(snapshot),
    )
    await execute(
        database,
        """
        INSERT INTO optout_registry (phone_number, status, source, reason)
        VALUES ($1, 'opted_out', 'texting', 'STOP')""",
        PHONE,
    )
    for status, source, reason in (("opted_in", "ghl", "form"), ("opted_out", "texting", "STOP")):
        await execute(
            database,
            "INSERT INTO optout_events (phone_number, status, source, reason) VALUES ($1, $2, $3, $4)",
            PHONE,
            status,
            source,
            reason,
        )
    await execute(
        database,
        """
        INSERT INTO call_list_registry (agent_key, list_key, aloware_list_id, aloware_list_name)
        VALUES ('CHRIS', 'CALL_NOW', 'L100', 'CHRIS - Call Now'), ('CHRIS', 'HOT', 'L101', 'CHRIS - Hot')""",
    )
    await execute(
        database,
        """
        INSERT INTO contact_list_memberships (contact_id, agent_key, list_key, status, reason)
        VALUES ('ghlContact0001', 'CHRIS', 'CALL_NOW', 'active', 'tag call-now'),
               ('ghlContact0001', 'CHRIS', 'HOT', 'removed', 'opted out')""",
    )
    await execute(
        database, "INSERT INTO contact_agent_state (contact_id, agent_key) VALUES ('ghlContact0001', 'CHRIS')"
    )
    ghl_event = await insert_event(database, entity_id="ghlContact0001", status="done")
    alo_event = await insert_event(
        database, source="aloware", event_type="contact_updated", entity_id="alo-42", status="error"
    )
    await insert_event(database, entity_id="someoneElse", status="done")
    await execute(
        database,
        """
        INSERT INTO sync_log (direction, entity_type, entity_id, source_id, target_id, status, correlation_id, rule)
        VALUES ('aloware_to_ghl', 'contact', 'alo-42', 'alo-42', 'ghlContact0001', 'error', $1, 'CA-2')""",
        alo_event,
    )
    return {"ghl_event": ghl_event, "alo_event": alo_event}


@pytest.mark.parametrize(
    ("kind", "query"),
    [
        ("phone", "(555) 010-0001"),
        ("phone", "1 555 010 0001"),
        ("phone", PHONE),
        ("email", "jane.doe@example.com"),
        ("ghl", "ghlContact0001"),
        ("aloware", "alo-42"),
    ],
)
async def test_a_person_is_found_by_any_of_their_ids(base_env: dict[str, str], kind: str, query: str) -> None:
    database = base_env["DATABASE_URL"]
    events = await seed_person(database)
    async with console_client(console_settings(base_env)) as client:
        await signed_in(client)
        page = (await client.get("/contacts", params={"kind": kind, "q": query})).text
    assert 'id="ghl-id">ghlContact0001<' in page and 'id="aloware-id">alo-42<' in page
    optout = page[page.index('id="optout-status"') :]
    assert "opted_out" in optout[:300] and "texting" in optout[:300] and "STOP" in optout[:300]
    history = page[page.index('id="optout-history"') : page.index('id="lists"')]
    assert history.index("opted_out") < history.index("opted_in")  # newest first
    lists = page[page.index('id="memberships"') : page.index('id="recent"')]
    assert "CHRIS - Call Now" in lists and "L100" in lists and "active" in lists and "removed" in lists
    assert 'id="agent">CHRIS<' in page
    recent = page[page.index('id="contact-events"') : page.index('id="contact-sync-log"')]
    assert events["ghl_event"] in recent and events["alo_event"] in recent and "someoneElse" not in recent
    assert "CA-2" in page[page.index('id="contact-sync-log"') :]
    fields = page[page.index('id="fields"') : page.index('id="optout"')]
    assert "Jane" in fields and "Austin" in fields
    assert "not configured: Aloware&#39;s side is unknown" in fields  # no Aloware here
    reconcile = page[page.index('id="reconcile"') :]
    assert sorted(re.findall(r'name="event_id" value="([^"]+)"', reconcile)) == sorted(events.values())
    audit = await fetch(database, "SELECT action, target, detail FROM console_audit WHERE action = 'contact_lookup'")
    assert audit == [{"action": "contact_lookup", "target": "ghl:ghlContact0001", "detail": {"kind": kind}}]


async def test_a_number_nobody_has_says_so_and_an_unusable_one_is_refused(base_env: dict[str, str]) -> None:
    async with console_client(console_settings(base_env)) as client:
        await signed_in(client)
        none = (await client.get("/contacts", params={"kind": "phone", "q": "+15550199999"})).text
        assert 'id="no-mapping"' in none and "no opt-out recorded" in none
        bad = (await client.get("/contacts", params={"kind": "phone", "q": "12"})).text
        assert "is not a phone number" in bad


async def test_reconcile_now_previews_a_replay_of_the_persons_newest_events(base_env: dict[str, str]) -> None:
    database = base_env["DATABASE_URL"]
    events = await seed_person(database)
    async with console_client(console_settings(base_env)) as client:
        csrf = await signed_in(client)
        answer = await client.post(
            "/contacts/reconcile",
            data={"csrf_token": csrf, "contact": "ghlContact0001", "event_id": list(events.values())},
        )
        assert answer.status_code == 303 and answer.headers["location"].startswith("/bulk/")
        page = (await client.get(answer.headers["location"])).text
        assert 'id="bulk-count">2<' in page and "Reconciling contact" in page and "ghlContact0001" in page
    audit = await fetch(database, "SELECT detail FROM console_audit WHERE action = 'bulk_preview'")
    assert sorted(audit[0]["detail"]["eventIds"]) == sorted(events.values())
    assert audit[0]["detail"]["contact"] == "ghlContact0001"
