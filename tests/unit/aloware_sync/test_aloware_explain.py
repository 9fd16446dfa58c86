"""``dfm replay --dry-run`` for aloware-sync: the plan of every family for an event (CG and the
call lists, D-3, O-7 with R3, a STOP's R3, M-3), one line per operation, from what PostgreSQL
knows, writing nothing and showing no phone number. (Needs the test database: the known state
is read from it; no NATS, no vendor.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.aloware_sync.explain import explain
from services.infra.db.models import (
    CallListRegistryRow,
    ContactListMembershipRow,
    ContactMappingRow,
    OptoutRegistryRow,
    SyncLogRow,
)
from services.infra.db.session import create_engine
from services.infra.settings import Settings
from tests.unit.aloware_sync.aloware_plans import event

ADA, ADA_PHONE, ALO = "ghlContactAda0000001", "+15555550101", "7000001"
STAND_IN = "(the webhook body stands in for GHL's answer; a webhook carries no timezone)"


def configured(db: str, **extra: Any) -> Settings:
    return Settings.model_validate({"database_url": db, **extra})


@pytest.fixture
async def engine(clean_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=clean_db), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


async def given(engine: AsyncEngine, *statements: Any) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(statement)


MAPPED = insert(ContactMappingRow).values(
    ghl_contact_id=ADA, aloware_contact_id=ALO, phone_number=ADA_PHONE, sync_direction="bidirectional"
)
ON_A_LIST = [
    insert(ContactListMembershipRow).values(
        contact_id=ADA, agent_key="CHRIS", list_key="CALL_NOW", status="active", reason="added"
    ),
    insert(CallListRegistryRow).values(
        agent_key="CHRIS", list_key="CALL_NOW", aloware_list_id="list-9", aloware_list_name="DF_CHRIS_CALL_NOW"
    ),
]


async def unchanged(engine: AsyncEngine) -> tuple[int, ...]:
    async with engine.connect() as conn:
        return tuple(
            [
                int(await conn.scalar(select(func.count()).select_from(table)) or 0)
                for table in (SyncLogRow, ContactMappingRow, ContactListMembershipRow, OptoutRegistryRow)
            ]
        )


def no_phone_in(lines: list[str]) -> None:
    assert not [line for line in lines if "555555" in line], lines


async def test_cg_and_the_lists_of_a_new_contact(clean_db: str, engine: AsyncEngine) -> None:
    before = await unchanged(engine)
    lines = await explain(configured(clean_db), engine, event("ghl/ContactUpdate.json"))
    assert lines == [
        f"aloware-sync CG: read GHL contact {ADA}, look it up in Aloware by phone, write only the fields that "
        "differ (nothing if they agree)",
        f"aloware-sync: ghl {ADA}: not our own write",
        "aloware-sync: take the contact's lock",
        f"aloware-sync: ghl {ADA}: not our own write",
        f"aloware-sync: read GHL contact {ADA} {STAND_IN}",
        "aloware-sync: take the contact's lock",
        f"aloware-sync: ghl {ADA}: not our own write",
        "aloware-sync: look up the number ending 0101 in Aloware (A2; none mapped, planned as absent)",
        "aloware-sync: create the Aloware contact (A3, fields city, country, email, first_name, last_name, "
        "phone_number, state) and look it up by phone",
        f"aloware-sync: map GHL {ADA} to Aloware (new Aloware contact)",
        "aloware-sync: sync_log success CG",
        "aloware-sync: resolve the contact's agent (L-0) from its owner and tags (the owner's e-mail and the agent "
        "custom field are GHL reads, not made in a dry run)",
        "aloware-sync: take the contact's lock",
        f"aloware-sync: lists of GHL {ADA}: agent none yet, active none",
        "aloware-sync: sync_log skipped L-2 (Power Dialer lists are temporarily disabled)",
        "aloware-sync: sync_log skipped L-2 (Power Dialer lists are temporarily disabled)",
        f"aloware-sync: agent of GHL {ADA}: UNASSIGNED",
        "aloware-sync: applied",
    ]
    assert await unchanged(engine) == before


async def test_a_contact_known_to_aloware_stops_where_only_aloware_knows_its_fields(
    clean_db: str, engine: AsyncEngine
) -> None:
    await given(engine, MAPPED)
    lines = await explain(configured(clean_db), engine, event("ghl/ContactUpdate.json"))
    assert lines[-1] == (
        f"aloware-sync: look up Aloware contact {ALO} by phone (A2; not asked in a dry run); "
        "the rest of the plan depends on the answer"
    )


async def test_d3_takes_the_mapped_contact_off_every_list(clean_db: str, engine: AsyncEngine) -> None:
    await given(engine, MAPPED)
    lines = await explain(configured(clean_db), engine, event("ghl/ContactDelete.json"))
    assert lines[1:] == [
        f"aloware-sync: mapping of {ADA}: GHL {ADA} / Aloware {ALO}",
        "aloware-sync: take the contact's lock",
        f"aloware-sync: mapping of {ADA}: GHL {ADA} / Aloware {ALO}",
        f"aloware-sync: take Aloware contact {ALO} off every power-dialer list (A4)",
        f"aloware-sync: mark GHL {ADA} deleted; its memberships end",
        "aloware-sync: sync_log success D-3",
        "aloware-sync: applied",
    ]


async def test_o7_records_the_dnd_and_r3_empties_the_lists(clean_db: str, engine: AsyncEngine) -> None:
    await given(engine, MAPPED, *ON_A_LIST)
    before = await unchanged(engine)
    lines = await explain(
        configured(clean_db, enable_power_dialer_lists="true"), engine, event("ghl/ContactDndUpdate.json")
    )
    assert lines[2:] == [
        f"aloware-sync: read GHL contact {ADA} {STAND_IN}",
        "aloware-sync: record the number ending 0101 opted_out (source ghl): changes the registry",
        "aloware-sync: sync_log success O-7 (DND status: opted_out)",
        "aloware-sync: take the contact's lock",
        "aloware-sync: the number ending 0101: opted out, 1 active membership(s)",
        f"aloware-sync: take Aloware contact {ALO} off every power-dialer list (A4)",
        f"aloware-sync: membership DF_CHRIS_CALL_NOW of GHL {ADA}: removed (opted_out)",
        "aloware-sync: sync_log success L-2 (removed from DF_CHRIS_CALL_NOW)",
        "aloware-sync: applied",
    ]
    no_phone_in(lines)
    assert await unchanged(engine) == before


async def test_a_stop_for_a_number_on_no_list_plans_no_removal(clean_db: str, engine: AsyncEngine) -> None:
    lines = await explain(
        configured(clean_db, enable_power_dialer_lists="true"), engine, event("texting/optout.stop.json")
    )
    assert lines[1:] == [
        "aloware-sync: record the number ending 0103 opted_out (source texting): changes the registry",
        "aloware-sync: take the contact's lock",
        "aloware-sync: the number ending 0103: opted out, 0 active membership(s)",
        "aloware-sync: ignored (not_on_any_list)",
    ]


async def test_m3_links_a_text_to_the_mapped_aloware_contact(clean_db: str, engine: AsyncEngine) -> None:
    await given(engine, MAPPED)
    lines = await explain(
        configured(clean_db, texting_sync_to_aloware="true"), engine, event("texting/message.received.json")
    )
    assert lines[1:] == [
        f"aloware-sync: mapping of the number ending 0101: GHL {ADA} / Aloware {ALO}",
        f"aloware-sync: link text txtMsgDemo-0001 and the number's mappings to Aloware {ALO}",
        "aloware-sync: sync_log skipped M-3 (aloware_has_no_message_api)",
        "aloware-sync: skip (aloware_has_no_message_api)",
    ]
    no_phone_in(lines)


async def test_a_list_event_for_an_unsynced_contact_stops_at_the_ghl_read(clean_db: str, engine: AsyncEngine) -> None:
    lines = await explain(configured(clean_db, enable_power_dialer_lists="true"), engine, event("ghl/tag.added.json"))
    assert lines[-2:] == [
        "aloware-sync: mapping of ghlContactGrace00002: none",
        "aloware-sync: read GHL contact ghlContactGrace00002 (G1; not read in a dry run); the rest of the plan "
        "depends on the answer",
    ]


async def test_s_enrols_a_changed_list_status(clean_db: str, engine: AsyncEngine) -> None:
    from services.infra.db.models import ContactAgentStateRow

    await given(
        engine,
        MAPPED,
        insert(ContactAgentStateRow).values(contact_id=ADA, agent_key="CHRIS", last_aloware_list_status="warm"),
    )
    settings = configured(clean_db, enable_aloware_sequences="true", aloware_status_to_sequence='{"hot": "seq-hot"}')
    lines = await explain(settings, engine, event("aloware/contact-updated.json"))
    assert lines == [
        "aloware-sync S: if the list status changed, enrol the number in its mapped Aloware sequence",
        f"aloware-sync: mapping of {ALO}: GHL {ADA} / Aloware {ALO}",
        f"aloware-sync: agent state of GHL {ADA}: CHRIS, last list status 'warm'",
        f"aloware-sync: take Aloware contact {ALO} off every power-dialer list (A4)",
        "aloware-sync: take the number ending 0101 out of every sequence (A7)",
        "aloware-sync: enrol the number ending 0101 in sequence seq-hot (A6)",
        "aloware-sync: sync_log success S (dry run)",
        "aloware-sync: remember list status 'hot' (S-7)",
        "aloware-sync: applied",
    ]
