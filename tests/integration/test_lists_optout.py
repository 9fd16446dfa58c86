"""Opt-outs take a number off every Aloware call list at once, echoes of our own writes change
no list, and the agent custom field is found through GHL's custom-field definitions
(issue #16 items 2-4; spec/outbound.md O-5, L-0, L-2, L-5; spec/inbound.md R1, R3).

The opt-out tests run with the sandbox's own webhooks off (``DFM_SANDBOX_WEBHOOK_URL=""``):
every event the pipeline sees is one the test posts, so a list that empties was emptied by
the opt-out event itself, not by a later GHL contact event (the echo of our tag write)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest

from contracts.streams import ALOWARE_SYNC, expected_consumers
from services.infra.broker import consumer_config, prepare_topology
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.admin import ADMIN
from tests.support.contacts import send_aloware, settled
from tests.support.jobs_rig import fetch
from tests.support.lists import create_contact, job_run, members, memberships, setup_lists
from tests.support.lists_optout import _now, send_ghl
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}
PHONE = "+15555550361"
LISTS = ("DF_CHRIS_CALL_NOW", "DF_CHRIS_NEW_LEADS", "DF_RAFI_CALL_NOW")


async def events_seen(db: str) -> int:
    rows = await fetch(
        db, "SELECT (SELECT count(*) FROM webhook_events) + (SELECT count(*) FROM texting_webhook_events) AS n"
    )
    return int(rows[0]["n"])


async def on_two_lists(p: Pipeline, db: str) -> tuple[dict[str, Any], str]:
    """A contact of CHRIS on DF_CHRIS_CALL_NOW and DF_CHRIS_NEW_LEADS, through one ContactCreate."""
    await setup_lists(p, *LISTS)
    contact = await create_contact(p, firstName="Opal", phone=PHONE, assignedTo="sbxUserChris", tags=["call_now"])
    await send_ghl(p, "ContactCreate", contact)

    async def both_active() -> bool:
        state = await memberships(db)
        return state.get(("CHRIS", "CALL_NOW")) == state.get(("CHRIS", "NEW_LEADS")) == "active"

    await eventually(both_active)
    [alo] = await p.aloware_contacts()
    lists = await members(p)
    assert lists["DF_CHRIS_CALL_NOW"] == lists["DF_CHRIS_NEW_LEADS"] == [alo["id"]]
    return contact, str(alo["id"])


async def opt_out(p: Pipeline, trigger: str, contact: dict[str, Any], aloware_id: str) -> None:
    """The opt-out, and nothing else, from one of its four sources."""
    if trigger == "texting_stop":
        await send_texting(
            p,
            {
                **load_fixture("texting/optout.stop.json"),
                "from": PHONE,
                "messageId": "txtStopList-0001",
                "timestamp": _now(),
            },
        )
    elif trigger == "stop_keyword":
        await send_texting(
            p,
            {
                **load_fixture("texting/message.received-stop-keyword.json"),
                "from": PHONE,
                "messageId": "txtStopList-0002",
                "timestamp": _now(),
            },
        )
    elif trigger == "aloware_dnc":
        dnc = load_fixture("aloware/contact-dnc-updated.json")
        dnc["body"].update(id=aloware_id, phone_number=PHONE, updated_at=datetime.now(UTC).isoformat())
        await send_aloware(p, dnc)
    else:  # a human switches SMS DND on in GHL: GHL sends ContactDndUpdate only
        changed = await p.sandbox.patch(
            f"/_sandbox/ghl/contacts/{contact['id']}", json={"dndSettings": {"SMS": {"status": "active"}}}
        )
        await send_ghl(p, "ContactDndUpdate", changed.json())


@pytest.mark.parametrize("trigger", ["texting_stop", "stop_keyword", "aloware_dnc", "ghl_dnd"])
async def test_an_opt_out_takes_the_number_off_every_call_list_at_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, trigger: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true", DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        contact, aloware_id = await on_two_lists(p, clean_db)
        await opt_out(p, trigger, contact, aloware_id)

        async def off_every_list() -> bool:
            rows = await fetch(
                clean_db, "SELECT status, reason FROM contact_list_memberships WHERE contact_id = $1", contact["id"]
            )
            on_a_list = any(aloware_id in ids for ids in (await members(p)).values())
            return (
                len(rows) == 2
                and all((r["status"], r["reason"]) == ("removed", "opted_out") for r in rows)
                and not on_a_list
            )

        await eventually(off_every_list, timeout=10)
        assert await events_seen(clean_db) == 2  # the ContactCreate and the opt-out: no other event
        [registry] = await fetch(clean_db, "SELECT status FROM optout_registry WHERE phone_number = $1", PHONE)
        assert registry["status"] == "opted_out"
        removes = [c for c in await p.calls("aloware") if c["path"] == "/webhook/powerdialer-remove-contact-from-lists"]
        assert removes and {str(c["body"]["contact_id"]) for c in removes} == {aloware_id}
        # the row is written with the end of the opt-out's attempt, just after the removal
        logged = await eventually(
            lambda: fetch(
                clean_db,
                "SELECT status, target_id FROM sync_log WHERE rule = 'L-2' AND error_message LIKE 'removed from %'",
            )
        )
        assert [(r["status"], r["target_id"]) for r in logged] == [("success", aloware_id)]
        # nothing put it back
        last_remove = max(c["at"] for c in removes)
        assert not [
            c
            for c in await p.calls("aloware")
            if c["at"] > last_remove and c["path"] == "/webhook/powerdialer-add-contact-to-lists"
        ]


async def test_an_echo_of_our_own_write_changes_no_list(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """An Aloware call for an unknown number makes ghl-sync create the GHL contact and tag it;
    GHL's ContactCreate and ContactTagUpdate for those writes are echoes (R1): no list call."""
    from tests.support.jobs import all_in

    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_UNASSIGNED_NEW_LEADS", "DF_UNASSIGNED_CALL_NOW")
        call = await send_aloware(p, load_fixture("aloware/call-disposed.json"))
        await eventually(lambda: all_in(clean_db, [call["id"]], "done"))

        async def echoes_handled() -> list[dict[str, Any]]:
            rows = await fetch(
                clean_db,
                "SELECT e.canonical_type, d.outcome FROM webhook_events e "
                "JOIN event_deliveries d ON d.event_id = e.id "
                "WHERE e.source = 'ghl' AND d.consumer = 'aloware-sync' AND d.status = 'done'",
            )
            kinds = {r["canonical_type"] for r in rows}
            return rows if {"contact.created", "contact.tags_changed"} <= kinds else []

        rows = await eventually(echoes_handled)
        assert {r["outcome"] for r in rows} == {"echo"}
        assert not [c for c in await p.calls("aloware") if "powerdialer" in c["path"] or "call-lists" in c["path"]]
        assert await memberships(clean_db) == {}
        assert all(ids == [] for ids in (await members(p)).values())


async def test_a_reassignment_that_arrives_looking_like_an_echo_still_moves_the_lists(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """The echo ledger hashes the fields we write (names, phone, tags...), never the owner: a
    human who reassigns the contact right after one of our writes sends an event that hashes
    like our write. Its list effect is the human's reassignment, and it happens."""

    async def aloware_form(**fields: Any) -> None:  # a person edited in Aloware: Aloware sends its webhook
        answer = await p.sandbox.post(
            "/aloware/api/v1/webhook/forms",
            json={"api_token": "sandbox-aloware-token", "phone_number": "+15555550363", **fields},
        )
        assert answer.status_code == 200, answer.text

    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_UNASSIGNED_CALL_NOW", "DF_CHRIS_CALL_NOW")
        await aloware_form(first_name="Ada", last_name="Reed")  # ghl-sync creates the GHL contact: an echo
        [contact] = await eventually(p.ghl_contacts)
        await eventually(lambda: fetch(clean_db, "SELECT 1 FROM contact_agent_state"))
        await p.sandbox.post(f"/ghl/contacts/{contact['id']}/tags", headers=GHL, json={"tags": ["call_now"]})
        await eventually(lambda: _status(clean_db, ("UNASSIGNED", "CALL_NOW"), "active"))
        [alo] = await p.aloware_contacts()

        # our write (the person renamed in Aloware, copied to GHL), then at once a human assigns Chris in GHL
        await aloware_form(first_name="Adina", force_update=True)
        await eventually(lambda: _first_name(p, "Adina"))
        await p.sandbox.put(f"/ghl/contacts/{contact['id']}", headers=GHL, json={"assignedTo": "sbxUserChris"})

        await eventually(lambda: _status(clean_db, ("CHRIS", "CALL_NOW"), "active"))
        assert (await memberships(clean_db))[("UNASSIGNED", "CALL_NOW")] == "removed"
        lists = await members(p)
        assert lists["DF_CHRIS_CALL_NOW"] == [alo["id"]] and lists["DF_UNASSIGNED_CALL_NOW"] == []
        await eventually(lambda: settled(p, clean_db))  # every echo's attempt ended, its row written
        echoes = await fetch(
            clean_db, "SELECT count(*) AS n FROM sync_log WHERE rule = 'LP-1' AND source_id = $1", contact["id"]
        )
        assert echoes[0]["n"] >= 3  # the create, our rename and the reassignment all hashed as our writes


async def _status(db: str, key: tuple[str, str], status: str) -> bool:
    return (await memberships(db)).get(key) == status


async def _first_name(p: Pipeline, name: str) -> bool:
    return any(c.get("firstName") == name for c in await p.ghl_contacts())


def test_the_agent_field_key_resolves_to_the_field_id() -> None:
    from services.domain.call_lists import custom_field_id

    fields = [
        {"id": "cfScore", "name": "Lead Score", "fieldKey": "contact.lead_score"},
        {"id": "cfAgent", "name": "Assigned Agent", "fieldKey": "contact.assigned_agent"},
    ]
    assert custom_field_id("assignedAgent", fields) == "cfAgent"  # the default key, GHL's generated fieldKey
    assert custom_field_id("contact.assigned_agent", fields) == "cfAgent"
    assert custom_field_id("assigned_agent", fields) == "cfAgent"
    assert custom_field_id("Assigned Agent", fields) == "cfAgent"
    assert custom_field_id("cfAgent", fields) == "cfAgent"  # an id configured directly
    assert custom_field_id("agent", fields) is None
    assert custom_field_id("assignedAgent", []) is None


async def test_the_field_definitions_are_read_once_and_again_only_on_a_miss(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    """The agent field is resolved through one definitions read, cached; a miss (the key not
    found, or a contact carrying a field id not in the cache) reads again, at most once per
    refresh interval, so a location without the field does not cost a GHL call per event."""
    import httpx

    from services.clients.ghl import GhlClient, GhlContact
    from services.sandbox.app import create_sandbox_app
    from services.tooling.agents import AgentField
    from tests.support.ingress_rig import serving

    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    now = [0.0]

    def contact(*fields: tuple[str, str]) -> GhlContact:
        return GhlContact.model_validate({"id": "c1", "customFields": [{"id": i, "value": v} for i, v in fields]})

    async with (
        serving(create_sandbox_app(settings), "/_sandbox/calls", port=settings.sandbox_port) as url,
        httpx.AsyncClient(base_url=url) as sandbox,
    ):

        async def reads() -> int:
            calls = (await sandbox.get("/_sandbox/calls", params={"vendor": "ghl"})).json()
            return len([c for c in calls if c["path"].endswith("/customFields") and c["status"] == 200])

        ghl = GhlClient.from_settings(settings)
        try:
            field = AgentField(ghl, "assignedAgent", refresh_s=60, clock=lambda: now[0])
            assert await field.value(contact()) is None
            assert await field.value(contact()) is None and await reads() == 1  # no such field: not asked again yet
            agent = (await sandbox.post("/_sandbox/ghl/custom-fields", json={"name": "Assigned Agent"})).json()
            now[0] = 61
            assert await field.value(contact((agent["id"], "Chris"))) == "Chris" and await reads() == 2
            assert await field.value(contact((agent["id"], "Rafi"))) == "Rafi" and await reads() == 2  # cached
            score = (await sandbox.post("/_sandbox/ghl/custom-fields", json={"name": "Lead Score"})).json()
            both = contact((score["id"], "9"), (agent["id"], "Chris"))
            assert await field.value(both) == "Chris" and await reads() == 2  # an unknown id, but read 0 s ago
            now[0] = 200
            assert await field.value(both) == "Chris" and await reads() == 3  # the unknown id: read again
            now[0] = 400
            assert await field.value(both) == "Chris" and await reads() == 3  # known now
        finally:
            await ghl.aclose()


async def custom_field_contact(p: Pipeline, db: str) -> tuple[dict[str, Any], str]:
    """A contact without an owner whose custom field "Assigned Agent" says Chris (and whose
    other custom field says Rafi, so reading the wrong field resolves the wrong agent)."""
    score = (
        await p.sandbox.post(
            "/_sandbox/ghl/custom-fields", json={"name": "Lead Score", "fieldKey": "contact.lead_score"}
        )
    ).json()
    agent = (
        await p.sandbox.post(
            "/_sandbox/ghl/custom-fields", json={"name": "Assigned Agent", "fieldKey": "contact.assigned_agent"}
        )
    ).json()
    await setup_lists(
        p,
        "DF_CHRIS_NEW_LEADS",
        "DF_CHRIS_CALL_NOW",
        "DF_RAFI_NEW_LEADS",
        "DF_UNASSIGNED_NEW_LEADS",
        "DF_UNASSIGNED_CALL_NOW",
    )
    contact = await create_contact(
        p,
        firstName="Cleo",
        phone="+15555550362",
        tags=["call_now"],
        customFields=[{"id": score["id"], "field_value": "Rafi"}, {"id": agent["id"], "field_value": "chris"}],
    )

    async def placed() -> dict[tuple[str, str], str]:
        state = await memberships(db)
        return state if len([s for s in state.values() if s == "active"]) == 2 else {}

    state = await eventually(placed)
    assert state == {("CHRIS", "NEW_LEADS"): "active", ("CHRIS", "CALL_NOW"): "active"}, state
    [alo] = await p.aloware_contacts()
    return contact, str(alo["id"])


async def test_a_contact_whose_agent_is_set_by_custom_field_lands_on_that_agents_list(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        contact, aloware_id = await custom_field_contact(p, clean_db)
        lists = await members(p)
        assert lists["DF_CHRIS_NEW_LEADS"] == lists["DF_CHRIS_CALL_NOW"] == [aloware_id]
        assert lists["DF_UNASSIGNED_NEW_LEADS"] == lists["DF_RAFI_NEW_LEADS"] == []
        [state] = await fetch(
            clean_db, "SELECT agent_key FROM contact_agent_state WHERE contact_id = $1", contact["id"]
        )
        assert state["agent_key"] == "CHRIS"
        await eventually(lambda: settled(p, clean_db))  # the rule's attempt ended, its rows written
        reasons = await fetch(
            clean_db, "SELECT DISTINCT details->>'agent_reason' AS r FROM sync_log WHERE rule = 'L-2'"
        )
        assert [r["r"] for r in reasons] == ["custom_field_match:chris"]
        lookups = [c for c in await p.calls("ghl") if c["path"].endswith("/customFields")]
        assert lookups and all(c["status"] == 200 for c in lookups)


async def test_the_admin_rebuild_resolves_the_custom_field_agent_the_same_way(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        _, aloware_id = await custom_field_contact(p, clean_db)
        answer = await p.ingress.post(
            "/api/admin/lists/rebuild", headers=ADMIN, params={"agentKey": "CHRIS", "listKey": "CALL_NOW"}
        )
        run = await job_run(p, answer, "lists-rebuild")
        assert run["status"] == "success", run
        assert (run["totals"]["rebuilt"], run["totals"]["removed"], run["totals"]["errors"]) == (1, 0, [])
        assert (await members(p))["DF_CHRIS_CALL_NOW"] == [aloware_id]
        assert (await memberships(clean_db))[("CHRIS", "CALL_NOW")] == "active"


def test_both_consumers_read_an_opt_out_with_the_one_shared_reader() -> None:
    """ghl-sync and aloware-sync record the same event in the registry; both read its DNC flag
    and its time with services/domain/optout.py, so they cannot disagree."""
    from services.domain import optout

    default = datetime(2026, 1, 1, tzinfo=UTC)
    cases = [
        ({"is_dnc": True}, {}, True),
        ({"is_dnc": False}, {}, False),
        ({"dnc": True}, {}, True),
        ({"status": "DNC-listed"}, {}, True),
        ({"status": "active"}, {}, False),
        ({}, {"is_dnc": True}, True),
        ({}, {"status": "dnc"}, True),
        ({}, {}, False),
    ]
    for body, top, expected in cases:
        assert optout.dnc_flag(body, top) is expected, (body, top)
    assert optout.event_time("2025-03-07T09:00:00Z", default) == datetime(2025, 3, 7, 9, tzinfo=UTC)
    assert optout.event_time("2025-03-07T09:00:00", default) == datetime(2025, 3, 7, 9, tzinfo=UTC)
    assert optout.event_time("2025-03-07T11:00:00+02:00", default) == datetime(2025, 3, 7, 9, tzinfo=UTC)
    for value in ("yesterday", "", None, 5):
        assert optout.event_time(value, default) == default, value


def test_aloware_sync_takes_every_opt_out_subject() -> None:
    """Each opt-out's event waits for aloware-sync too (its aggregate status counts it)."""
    for subject in (
        "webhooks.texting.optout.optout_stop",
        "webhooks.texting.message.message_received",
        "webhooks.aloware.contact.contact_dnc_updated",
        "webhooks.ghl.contact.contact_dnd_update",
    ):
        assert "aloware-sync" in expected_consumers(subject), subject
    assert "aloware-sync" not in expected_consumers("webhooks.aloware.contact.contact_created")


async def test_the_topology_step_widens_an_existing_durables_filters(
    nats_server: EmbeddedNats, base_env: dict[str, str]
) -> None:
    """A deployment that already has the aloware-sync durable with the old filters gets the
    new ones from the topology step (``dfm migrate upgrade``), not only a fresh install."""
    settings = Settings(**{k.lower(): v for k, v in base_env.items()})
    old = replace(
        ALOWARE_SYNC,
        filter_subjects=(
            "webhooks.ghl.contact.>",
            "webhooks.ghl.tag.>",
            "webhooks.ghl.opportunity.>",
            "webhooks.texting.message.>",
        ),
    )
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_consumer(old.stream, consumer_config(old, settings.dfm_consumer_ack_wait_s))
        info = await js.consumer_info(old.stream, old.durable)
        assert sorted(info.config.filter_subjects or []) == sorted(old.filter_subjects)
        await prepare_topology(settings)
        info = await js.consumer_info(ALOWARE_SYNC.stream, ALOWARE_SYNC.durable)
        assert sorted(info.config.filter_subjects or []) == sorted(ALOWARE_SYNC.filter_subjects)
    finally:
        await nc.close()
