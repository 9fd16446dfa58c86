"""``dfm replay --dry-run`` for ghl-sync: the plan of every rule family for an event, one
line per operation, from what PostgreSQL knows, writing nothing. (Needs the test database:
the known state is read from it; no NATS, no vendor.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.domain.contact import CanonicalContact
from services.ghl_sync.explain import explain
from services.infra.db.models import (
    ContactMappingRow,
    EffectClaimRow,
    GhlObjectRecordMappingRow,
    MessageMappingRow,
    OptoutEventRow,
    OptoutRegistryRow,
    SyncLogRow,
    WebhookEventRow,
)
from services.infra.db.session import create_engine
from services.infra.settings import Settings
from tests.unit.ghl_sync.ghl_plans import NOW, event

ADA = CanonicalContact.build(
    first_name="Ada",
    last_name="Example",
    email="ada@example.com",
    phone="+15555550101",
    timezone="America/Los_Angeles",
    country="US",
    state="CA",
    city="Springfield",
)


def configured(db: str, **extra: Any) -> Settings:
    return Settings(database_url=db, verity_database_url="postgresql://verity.invalid/verity", **extra)


@pytest.fixture
async def engine(clean_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=clean_db), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


async def add(engine: AsyncEngine, table: Any, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(table).values(**values))


async def map_ada(engine: AsyncEngine, **values: Any) -> None:
    await add(
        engine,
        ContactMappingRow,
        ghl_contact_id="ghlAda",
        aloware_contact_id="7000001",
        phone_number="+15555550101",
        sync_direction="bidirectional",
        **values,
    )


async def written(engine: AsyncEngine) -> tuple[int, ...]:
    """Rows the rules write: sync_log, opt-out history, effect claims."""
    async with engine.connect() as conn:
        return tuple(
            [
                int(await conn.scalar(select(func.count()).select_from(t)) or 0)
                for t in (SyncLogRow, OptoutEventRow, EffectClaimRow)
            ]
        )


async def test_a_contact_with_a_snapshot_shows_the_re_read_and_its_writes(clean_db: str, engine: AsyncEngine) -> None:
    await map_ada(
        engine, ghl_snapshot=ADA.with_fields(city="Shelbyville").snapshot(), aloware_event_at=NOW - timedelta(days=30)
    )
    settings = configured(clean_db, contact_source_of_truth="aloware")
    assert await explain(settings, engine, event("aloware/contact-created.json")) == [
        "ghl-sync CA: take the contact's lock",
        "ghl-sync CA: not an echo of our own write",
        "ghl-sync CA: mapping of Aloware contact 7000001: ghlAda",
        "ghl-sync CA: re-read GHL contact ghlAda (recreate it if deleted)",
        "ghl-sync CA: PUT /contacts/ghlAda fields ['city']",
        "ghl-sync CA: sync_log success CA",
        "ghl-sync CA: applied",
    ]


async def test_a_contact_replayed_unchanged_has_nothing_to_write(clean_db: str, engine: AsyncEngine) -> None:
    await map_ada(engine, ghl_snapshot=ADA.snapshot(), aloware_event_at=datetime(2025, 3, 4, 15, 12, tzinfo=UTC))
    lines = await explain(configured(clean_db), engine, event("aloware/contact-created.json"))
    assert lines[-3:] == [
        "ghl-sync CA: then nothing to write if GHL still matches (no_changes)",
        "ghl-sync CA: sync_log skipped CA (no_changes)",
        "ghl-sync CA: skip (no_changes)",
    ]


async def test_an_unknown_contact_is_created_or_merged_into_the_duplicate_ghl_names(
    clean_db: str, engine: AsyncEngine
) -> None:
    lines = await explain(configured(clean_db), engine, event("aloware/contact-created.json"))
    assert (
        "ghl-sync CA: no mapping with a snapshot; create the contact (a duplicate answer names the one to merge "
        "into; GHL is searched by phone/e-mail first when the location allows duplicates), or update the one found"
        in lines
    )


async def test_aloware_contacts_switched_off_are_skipped(clean_db: str, engine: AsyncEngine) -> None:
    settings = configured(clean_db, sync_aloware_contacts_to_ghl=False)
    assert await explain(settings, engine, event("aloware/contact-created.json")) == [
        "ghl-sync CA: sync_log skipped CA-0 (aloware_contact_event_ignored_source_of_truth_is_ghl)",
        "ghl-sync CA: skip (aloware_contact_event_ignored_source_of_truth_is_ghl)",
    ]


async def test_a_call_on_a_mapped_contact_shows_its_note_and_tags(clean_db: str, engine: AsyncEngine) -> None:
    await map_ada(engine)
    assert await explain(configured(clean_db), engine, event("aloware/call-disposed.json")) == [
        "ghl-sync CL: take the contact's lock",
        "ghl-sync CL: mapping by Aloware id 7000001, then phone: GHL contact ghlAda",
        "ghl-sync CL: POST /contacts/ghlAda/notes (109 characters) once, claim note:aloware:call:9100001",
        "ghl-sync CL: POST /contacts/ghlAda/tags ['Call: Interested', 'Outbound Call'] (those GHL lacks)",
        "ghl-sync CL: sync_log success CL",
        "ghl-sync CL: applied",
    ]


async def test_a_call_of_an_unknown_caller_asks_aloware_then_finds_or_creates(
    clean_db: str, engine: AsyncEngine
) -> None:
    lines = await explain(configured(clean_db), engine, event("aloware/call-disposed.json"))
    assert lines[2:4] == [
        "ghl-sync CL: ask Aloware for the contact by phone (A2; not asked in a dry run)",
        "ghl-sync CL: search GHL by phone/e-mail, else create the contact (CA-3)",
    ]


async def test_an_artifact_posted_before_shows_nothing_to_post(clean_db: str, engine: AsyncEngine) -> None:
    await map_ada(engine)
    await add(
        engine,
        EffectClaimRow,
        key="note:aloware:recording:9500001",
        effect="ghl.note",
        state="done",
        token=uuid.uuid4(),
        vendor_id="note1",
        expires_at=NOW,
    )
    assert await explain(configured(clean_db), engine, event("aloware/recording-saved.json")) == [
        "ghl-sync AR: mapping by Aloware id 7000001, then phone: GHL contact ghlAda",
        "ghl-sync AR: take the contact's lock",
        "ghl-sync AR: note note:aloware:recording:9500001: posted before, nothing to post",
        "ghl-sync AR: sync_log success AR (already_synced)",
        "ghl-sync AR: skip (already_synced)",
    ]


async def test_a_disposition_without_mapping_is_skipped(clean_db: str, engine: AsyncEngine) -> None:
    assert await explain(configured(clean_db), engine, event("aloware/contact-disposed.json")) == [
        "ghl-sync D-2: mapping by Aloware id 7000001, then phone: none",
        "ghl-sync D-2: contact sync of Aloware contact 7000001 still to run: none",
        "ghl-sync D-2: sync_log skipped D-2 (No contact mapping found)",
        "ghl-sync D-2: skip (No contact mapping found)",
    ]


async def test_a_disposition_waits_for_its_contact_s_sync_still_in_the_ledger(
    clean_db: str, engine: AsyncEngine
) -> None:
    """Lanes (#18): the contact's created event is recorded and not yet run (bulk lane): the
    disposition is tried again later instead of being skipped; once that event is done, skipped."""
    waiting = uuid.uuid4()
    await add(
        engine,
        WebhookEventRow,
        id=waiting,
        source="aloware",
        event_type="Contact Created",
        event_token="contact_created",
        canonical_type="contact.created",
        entity_type="contact",
        entity_id="7000001",
        payload_json={"body": {"id": "7000001"}},
        dedupe_key=f"k:{waiting}",
        status="pending",
    )
    lines = await explain(configured(clean_db), engine, event("aloware/contact-disposed.json"))
    assert lines[1:] == [
        f"ghl-sync D-2: contact sync of Aloware contact 7000001 still to run: event {waiting} (this one waits for it)",
        f"ghl-sync D-2: try again later (Aloware contact 7000001 is not in GHL yet: its contact sync ({waiting}) "
        "is still to run)",
    ], lines
    async with engine.begin() as conn:
        await conn.execute(update(WebhookEventRow).values(status="done"))
    assert (await explain(configured(clean_db), engine, event("aloware/contact-disposed.json")))[-1] == (
        "ghl-sync D-2: skip (No contact mapping found)"
    )


async def test_a_dnc_removal_after_a_texting_stop_keeps_the_tags(clean_db: str, engine: AsyncEngine) -> None:
    await map_ada(engine)
    await add(
        engine,
        OptoutRegistryRow,
        phone_number="+15555550101",
        status="opted_out",
        source="texting",
        reason="STOP",
        last_event_at=datetime(2025, 3, 1, tzinfo=UTC),
    )
    assert await explain(configured(clean_db), engine, event("aloware/contact-dnc-removed.json")) == [
        "ghl-sync D-1: opt-out registry: opted_in (aloware, DNC Removed) kept opted_out (opt_in_blocked_by_texting)",
        "ghl-sync D-1: take the contact's lock",
        "ghl-sync D-1: GHL contact ghlAda (mapped)",
        "ghl-sync D-1: sync_log skipped D-1 (opt_in_blocked_by_texting)",
        "ghl-sync D-1: skip (opt_in_blocked_by_texting)",
    ]


async def test_a_texting_stop_tags_the_texting_contact(clean_db: str, engine: AsyncEngine) -> None:
    assert await explain(configured(clean_db), engine, event("texting/optout.stop.json")) == [
        "ghl-sync O-2: opt-out registry: opted_out (texting, STOP) applies",
        "ghl-sync O-2: take the contact's lock",
        "ghl-sync O-2: search GHL by phone, else create the contact with the phone only (M-1.5)",
        "ghl-sync O-2: POST /contacts/(new GHL contact)/tags ['DNC-SMS', 'SMS Opted Out'] (those GHL lacks)",
        "ghl-sync O-2: sync_log success O-2",
        "ghl-sync O-2: applied",
    ]


async def test_a_message_shows_its_conversation_and_post(clean_db: str, engine: AsyncEngine) -> None:
    await map_ada(engine, ghl_conversation_id="conv1")
    assert await explain(configured(clean_db), engine, event("texting/message.received.json")) == [
        "ghl-sync M-1: not posted to GHL yet",
        "ghl-sync M-1: take the contact's lock",
        "ghl-sync M-1: GHL contact ghlAda (mapped)",
        "ghl-sync M-1: GHL conversation conv1",
        "ghl-sync M-1: POST /conversations/messages/inbound (inbound, 0 attachments) to conversation conv1 once, "
        "claim m1:txtMsgDemo-0001",
        "ghl-sync M-1: sync_log success M-1",
        "ghl-sync M-1: applied",
    ]


async def test_a_status_of_an_agent_s_message_is_reported(clean_db: str, engine: AsyncEngine) -> None:
    await add(
        engine,
        MessageMappingRow,
        texting_message_id="txtMsgDemo-0002",
        ghl_message_id="gmAgent",
        verity_message_id="vm1",
        direction="outbound",
    )
    assert await explain(configured(clean_db), engine, event("texting/message.delivered.json")) == [
        "ghl-sync M-4: agent message gmAgent",
        "ghl-sync M-4: PUT /conversations/messages/gmAgent/status delivered",
        "ghl-sync M-4: delivery status delivered on the agent's message",
        "ghl-sync M-4: sync_log success M-4 (status delivered)",
        "ghl-sync M-4: applied",
    ]


async def test_broadcast_analytics_show_the_record_write(clean_db: str, engine: AsyncEngine) -> None:
    await add(
        engine,
        GhlObjectRecordMappingRow,
        object_key="custom_objects.broadcasts",
        external_id="brdDemo-0001",
        ghl_record_id="rec1",
        updated_at=datetime(2025, 3, 10, 17, tzinfo=UTC),
    )
    assert await explain(configured(clean_db), engine, event("broadcast/analytics_updated.json")) == [
        "ghl-sync B: take the lock of broadcast:brdDemo-0001",
        "ghl-sync B: custom_objects.broadcasts record rec1, written 2025-03-10T17:00:00+00:00",
        "ghl-sync B: recompute the figures from Verity's database (not read in a dry run)",
        "ghl-sync B: PUT custom_objects.broadcasts record rec1",
        "ghl-sync B: sync_log success B",
        "ghl-sync B: applied",
    ]


async def test_appointments_and_unrouted_events(clean_db: str, engine: AsyncEngine) -> None:
    settings = configured(clean_db)
    assert await explain(settings, engine, event("aloware/appointment-saved.json")) == [
        "ghl-sync CA: skip (appointments_sot_is_ghl)"
    ]
    assert await explain(settings, engine, event("texting/optout.help.json")) == ["ghl-sync: no rule for optout.help"]


async def test_an_invalid_payload_is_shown_dead(clean_db: str, engine: AsyncEngine) -> None:
    lines = await explain(configured(clean_db), engine, event("texting/optout.stop.json", **{"from": None, "to": None}))
    assert lines == ["ghl-sync O-2: dead (No phone number in payload)"]


@pytest.mark.parametrize(
    "fixture",
    [
        "aloware/contact-created.json",
        "aloware/contact-disposed.json",
        "aloware/contact-dnc-updated.json",
        "aloware/call-disposed.json",
        "aloware/transcription-saved.json",
        "texting/optout.stop.json",
        "texting/message.received-stop-keyword.json",
        "texting/message.sent.json",
        "texting/message.failed.json",
        "broadcast/analytics_updated.json",
    ],
)
async def test_explaining_writes_nothing(fixture: str, clean_db: str, engine: AsyncEngine) -> None:
    await map_ada(engine, ghl_snapshot=ADA.snapshot())
    before = await written(engine)
    lines = await explain(configured(clean_db), engine, event(fixture))
    assert len(lines) >= 2 and await written(engine) == before
    assert not any("+1555" in line or "ada@example.com" in line for line in lines)  # no personal data
