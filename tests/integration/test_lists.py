"""Agent-managed call lists end to end (spec/outbound.md §1.10; acceptance scenarios T9–T12):
GHL contact and tag events → aloware-sync → the sandbox Aloware's power-dialer lists."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.domain.call_lists import Agent, ContactView, list_intent, resolve_agent, tag_names
from services.infra.signing import ghl_ed25519_signature, load_private_key
from tests.support.admin import ADMIN
from tests.support.contacts import settled
from tests.support.jobs_rig import execute, fetch
from tests.support.lists import GHL, create_contact, job_run, members, memberships, setup_lists
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks" / "ghl"
KEYS = ["CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT"]


def test_agent_resolution_and_intent_rules() -> None:
    agents = [
        Agent("CHRIS", "uChris", "chris@x.com", "Chris", "Owner: Chris"),
        Agent("RAFI", None, None, None, "Owner: Rafi"),
    ]
    assert resolve_agent(agents, ContactView("uChris", None, None, ()), "UNASSIGNED") == (
        "CHRIS",
        "owner_id_match:uChris",
    )
    assert resolve_agent(agents, ContactView("uX", "CHRIS@x.com", None, ()), "UNASSIGNED")[0] == "CHRIS"
    assert resolve_agent(agents, ContactView(None, None, "chris", ()), "UNASSIGNED")[1] == "custom_field_match:chris"
    assert resolve_agent(agents, ContactView(None, None, None, ("owner: rafi",)), "UNASSIGNED")[0] == "RAFI"
    assert resolve_agent(agents, ContactView(None, None, None, ()), "UNASSIGNED") == (
        "UNASSIGNED",
        "default_unassigned",
    )
    assert tag_names({"tagName": "call_now", "name": "Ada Lovelace"}) == ["call_now"]  # never the person's name
    assert tag_names({"body": {"tags": "hot, follow_up"}}) == ["hot", "follow_up"]
    assert list_intent(
        "tag.added", {"tag": "call_now"}, (), opted_out=False, list_keys=KEYS, mode="case_insensitive"
    ) == (["CALL_NOW"], [])
    assert list_intent("tag.added", {"tag": "call_now"}, (), opted_out=False, list_keys=KEYS, mode="exact") == ([], [])
    assert list_intent(
        "contact.updated", {}, ("hot", "x"), opted_out=True, list_keys=KEYS, mode="case_insensitive"
    ) == ([], KEYS)
    assert list_intent(
        "opportunity.statusChanged",
        {},
        (),
        opted_out=False,
        list_keys=KEYS,
        mode="case_insensitive",
        stage="Photo shoot",
    ) == ([], [])  # "hot" as a word only
    assert list_intent(
        "opportunity.statusChanged",
        {},
        (),
        opted_out=False,
        list_keys=KEYS,
        mode="case_insensitive",
        stage="Closed won",
    ) == ([], KEYS)


async def test_t9_t10_t11_tag_reassignment_and_opt_out(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "df_chris_call_now", "DF_CHRIS_NEW_LEADS", "DF_RAFI_CALL_NOW", "DF_RAFI_NEW_LEADS")
        contact = await create_contact(p, firstName="Lee", phone="+15555550301", assignedTo="sbxUserChris")
        await eventually(lambda: _has(clean_db, ("CHRIS", "NEW_LEADS"), "active"))
        [alo] = await p.aloware_contacts()
        assert (await members(p))["DF_CHRIS_NEW_LEADS"] == [alo["id"]]

        # T9: a human adds the tag call_now
        await p.sandbox.post(f"/ghl/contacts/{contact['id']}/tags", headers=GHL, json={"tags": ["call_now"]})
        await eventually(lambda: _has(clean_db, ("CHRIS", "CALL_NOW"), "active"))
        assert (await members(p))["DF_CHRIS_CALL_NOW"] == [alo["id"]]
        [registry] = await fetch(
            clean_db, "SELECT aloware_list_name FROM call_list_registry WHERE list_key = 'CALL_NOW'"
        )
        assert registry["aloware_list_name"] == "df_chris_call_now"  # matched case-insensitively

        # T10: reassigned CHRIS → RAFI with CALL_NOW active
        await p.sandbox.put(f"/ghl/contacts/{contact['id']}", headers=GHL, json={"assignedTo": "sbxUserRafi"})
        await eventually(lambda: _has(clean_db, ("RAFI", "CALL_NOW"), "active"))
        state = await memberships(clean_db)
        assert state[("CHRIS", "CALL_NOW")] == state[("CHRIS", "NEW_LEADS")] == "removed"
        lists = await members(p)
        assert lists["DF_RAFI_CALL_NOW"] == [alo["id"]] and lists["DF_CHRIS_CALL_NOW"] == []
        assert lists["DF_CHRIS_NEW_LEADS"] == [] and lists["DF_RAFI_NEW_LEADS"] == []  # event intent not applied
        [agent] = await fetch(clean_db, "SELECT agent_key FROM contact_agent_state")
        assert agent["agent_key"] == "RAFI"

        # T11: the number opts out; the next contact event removes it and adds nothing
        await execute(
            clean_db,
            "INSERT INTO optout_registry (phone_number, status, source, reason) "
            "VALUES ('+15555550301', 'opted_out', 'texting', 'STOP')",
        )
        await p.sandbox.put(f"/ghl/contacts/{contact['id']}", headers=GHL, json={"firstName": "Leigh"})
        await eventually(lambda: _has(clean_db, ("RAFI", "CALL_NOW"), "removed"))
        assert (await members(p))["DF_RAFI_CALL_NOW"] == []
        await eventually(lambda: settled(p, clean_db))  # the rule's attempt ended, its rows written
        skipped = await fetch(clean_db, "SELECT error_message FROM sync_log WHERE rule = 'L-2' AND status = 'skipped'")
        assert {"Contact is opted out, cannot add to lists"} == {s["error_message"] for s in skipped}


async def _has(db: str, key: tuple[str, str], status: str) -> bool:
    return (await memberships(db)).get(key) == status


async def test_t12_a_legacy_marker_tag_is_not_a_reason_to_skip(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_UNASSIGNED_CALL_NOW", "DF_UNASSIGNED_NEW_LEADS")
        contact = await create_contact(p, firstName="Old", phone="+15555550302", tags=["SYS:df_middleware_origin"])
        await eventually(lambda: _has(clean_db, ("UNASSIGNED", "NEW_LEADS"), "active"))
        await p.sandbox.post(f"/ghl/contacts/{contact['id']}/tags", headers=GHL, json={"tags": ["call_now"]})
        await eventually(lambda: _has(clean_db, ("UNASSIGNED", "CALL_NOW"), "active"))
        await eventually(lambda: settled(p, clean_db, 2))  # both attempts ended, their rows written
        rows = await fetch(
            clean_db,
            "SELECT details->>'legacy_marker' AS marker FROM sync_log WHERE rule = 'L-2' AND status = 'success'",
        )
        assert len(rows) == 2 and {r["marker"] for r in rows} == {"true"}  # NEW_LEADS, then CALL_NOW
        written = [c for c in await p.calls("ghl") if c["method"] in ("POST", "PUT") and isinstance(c["body"], dict)]
        assert not any(
            str(t).lower().startswith("sys:")
            for c in written
            if c["path"] != "/contacts/"
            for t in c["body"].get("tags", [])
        )


async def test_an_opportunity_event_for_an_unsynced_contact_creates_its_aloware_contact_first(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """L-2 step 2 on an opportunity event: its own id is the opportunity's, the contact is
    ``contactId``; the Aloware contact is created from that contact, then put on the list."""
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true", DFM_SANDBOX_WEBHOOK_URL="")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_UNASSIGNED_HOT")
        contact = await create_contact(p, firstName="Opal", phone="+15555550304")  # no webhook: never synced
        payload = {
            **json.loads((FIXTURES / "OpportunityStatusUpdate.json").read_text()),
            "locationId": p.settings.ghl_location_id,
            "contactId": contact["id"],
            "pipelineStage": "Hot prospect",
            "webhookId": "00000000-0000-4000-8000-0000000a1a01",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        body = json.dumps(payload).encode()
        key = load_private_key(Path(str(settings.dfm_ghl_signing_key_file)))
        answer = await p.ingress.post(
            "/api/webhooks/ghl",
            content=body,
            headers={"content-type": "application/json", "x-ghl-signature": ghl_ed25519_signature(key, body)},
        )
        assert answer.status_code == 200, answer.text
        await eventually(lambda: _has(clean_db, ("UNASSIGNED", "HOT"), "active"), timeout=30)
        [alo] = await p.aloware_contacts()
        assert alo["phone_number"] == "+15555550304"
        assert (await members(p))["DF_UNASSIGNED_HOT"] == [alo["id"]]
        [mapping] = await fetch(clean_db, "SELECT ghl_contact_id, aloware_contact_id FROM contact_mappings")
        assert (mapping["ghl_contact_id"], mapping["aloware_contact_id"]) == (contact["id"], alo["id"])


async def test_lists_disabled_by_default_write_nothing(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_UNASSIGNED_NEW_LEADS")
        await create_contact(p, firstName="Off", phone="+15555550303")

        async def logged() -> list[dict[str, Any]]:
            return await fetch(clean_db, "SELECT error_message FROM sync_log WHERE rule = 'L-2'")

        [row] = await eventually(logged)
        assert row["error_message"] == "Power Dialer lists are temporarily disabled"
        assert (await members(p))["DF_UNASSIGNED_NEW_LEADS"] == []
        assert not [c for c in await p.calls("aloware") if "powerdialer" in c["path"] or "call-lists" in c["path"]]


async def test_sequences_enrol_on_a_list_status_change_once(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Rule S: a changed ``aloware_list_status`` enrols the number in the mapped sequence; the
    same status again does nothing; an unmapped (optional) one is recorded as skipped."""
    from datetime import UTC, datetime, timedelta

    from tests.support.contacts import aloware_contact, send_aloware
    from tests.support.jobs import all_in

    settings = pipeline_settings(
        base_env,
        tmp_path,
        ENABLE_ALOWARE_SEQUENCES="true",
        ALOWARE_STATUS_TO_SEQUENCE=('{"hot": "seq-hot", "warm": {"sequence_id": null, "optional": true}}'),
    )
    async with running_pipeline(settings) as p:
        created = await send_aloware(p, aloware_contact(451))
        await eventually(lambda: all_in(clean_db, [created["id"]], "done"))
        await eventually(lambda: _state_row(clean_db))
        base = datetime.now(UTC)
        ids = []
        for n, status in enumerate(("hot", "hot", "warm"), start=1):
            update = aloware_contact(
                451,
                event="Contact Updated",
                updated_at=base + timedelta(seconds=n),
                custom_fields={"aloware_list_status": status},
                first=f"Ada{n}",
            )
            ids.append((await send_aloware(p, update))["id"])
            await eventually(lambda i=ids[-1]: all_in(clean_db, [i], "done"))
        assert (await p.sandbox.get("/_sandbox/aloware/sequences")).json() == {"+15555550451": "seq-hot"}
        rows = await fetch(
            clean_db,
            "SELECT rule, status, error_message, target_id FROM sync_log "
            "WHERE entity_type = 'sequence' ORDER BY started_at",
        )
        assert [(r["status"], r["target_id"]) for r in rows] == [("success", "seq-hot"), ("skipped", None)]
        assert rows[1]["error_message"] == 'Status "warm" not in mapping (optional)'
        enrolls = [c for c in await p.calls("aloware") if c["path"] == "/webhook/sequence-enroll"]
        assert len(enrolls) == 1


async def _state_row(db: str) -> bool:
    return bool(await fetch(db, "SELECT 1 FROM contact_agent_state"))


async def test_l5_admin_rebuild_revalidates_memberships_and_resets_the_list(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p:
        await setup_lists(p, "DF_CHRIS_CALL_NOW", "DF_CHRIS_NEW_LEADS")
        keep = await create_contact(
            p, firstName="Keep", phone="+15555550311", assignedTo="sbxUserChris", tags=["call_now"]
        )
        drop = await create_contact(
            p, firstName="Drop", phone="+15555550312", assignedTo="sbxUserChris", tags=["call_now"]
        )
        await eventually(lambda: _count_active(clean_db, "CALL_NOW", 2))
        # drift: GHL lost the tag without telling us, and someone added a stray to the list by hand
        await p.sandbox.patch(f"/_sandbox/ghl/contacts/{drop['id']}", json={"tags": []})
        lists = {item["name"]: item for item in (await p.sandbox.get("/_sandbox/aloware/lists")).json()}
        stray = (
            await p.sandbox.post(
                "/aloware/api/v1/webhook/forms",
                json={"api_token": "sandbox-aloware-token", "phone_number": "+15555550319"},
            )
        ).status_code
        assert stray == 200
        stray_id = next(c["id"] for c in await p.aloware_contacts() if c["phone_number"] == "+15555550319")
        await p.sandbox.post(
            "/aloware/api/v1/webhook/powerdialer-add-contact-to-lists",
            json={
                "api_token": "sandbox-aloware-token",
                "list_id": lists["DF_CHRIS_CALL_NOW"]["id"],
                "contact_ids": [stray_id],
            },
        )
        answer = await p.ingress.post(
            "/api/admin/lists/rebuild", headers=ADMIN, params={"agentKey": "CHRIS", "listKey": "CALL_NOW"}
        )
        run = await job_run(p, answer, "lists-rebuild")
        assert run["status"] == "success", run
        assert run["totals"]["rebuilt"] == 1 and run["totals"]["removed"] == 1
        keep_alo = next(c["id"] for c in await p.aloware_contacts() if c["phone_number"] == "+15555550311")
        assert (await members(p))["DF_CHRIS_CALL_NOW"] == [keep_alo]
        state = await fetch(
            clean_db,
            "SELECT c.contact_id, c.status FROM contact_list_memberships c WHERE list_key = 'CALL_NOW' ORDER BY status",
        )
        assert {(r["contact_id"], r["status"]) for r in state} == {(keep["id"], "active"), (drop["id"], "removed")}
        missing = await p.ingress.post(
            "/api/admin/lists/rebuild", headers=ADMIN, params={"agentKey": "NOBODY", "listKey": "HOT"}
        )
        assert missing.status_code == 404 and "not found in registry" in missing.json()["error"]


async def _count_active(db: str, key: str, n: int) -> bool:
    rows = await fetch(
        db, "SELECT count(*) AS n FROM contact_list_memberships WHERE list_key = $1 AND status = 'active'", key
    )
    return rows[0]["n"] == n
