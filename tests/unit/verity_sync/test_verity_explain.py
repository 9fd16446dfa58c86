"""``dfm replay --dry-run`` for verity-sync: the plan of every family for an event, one line
per operation, from what PostgreSQL knows, writing nothing. (Needs the test database: the
known state is read from it; no NATS, no vendor.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.db.models import ContactMappingRow, OptoutRegistryRow, SyncLogRow
from services.infra.db.session import create_engine
from services.infra.settings import Settings
from services.verity_sync.explain import explain
from tests.unit.verity_sync.verity_plans import ghl_event, provider_event


def configured(db: str, **extra: Any) -> Settings:
    return Settings(
        database_url=db,
        verity_base_url="http://verity.invalid",
        verity_api_key="verity-key",
        verity_database_url="postgresql://verity.invalid/verity",
        **extra,
    )


@pytest.fixture
async def engine(clean_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=clean_db), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


async def rows_written(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(SyncLogRow)) or 0)


async def test_a_ghl_webhook_shows_its_forward(clean_db: str, engine: AsyncEngine) -> None:
    event = ghl_event("ghl/ContactUpdate.json")
    assert event.payload_raw is not None
    assert await explain(configured(clean_db), engine, event) == [
        f"F-1 ForwardWebhook(body=<{len(event.payload_raw)} bytes>, signature='{event.forward_signature}')"
        "  [assumed: Verity accepts it]",
        "F-1 LogSync(rule='F-1', status='success', subject=ghl_to_verity/contact/ghlContactAda0000001)",
        "F-1 → applied",
    ]
    assert await rows_written(engine) == 0


async def test_a_forwarded_webhook_shows_nothing_to_do(clean_db: str, engine: AsyncEngine) -> None:
    event = ghl_event("ghl/ContactUpdate.json")
    async with engine.begin() as conn:
        await conn.execute(
            insert(SyncLogRow).values(
                id=uuid.uuid4(),
                direction="ghl_to_verity",
                entity_type="contact",
                entity_id="c",
                source_id="c",
                status="success",
                started_at=func.now(),
                correlation_id=str(event.event_id),
                rule="F-1",
                attempt=1,
            )
        )
    assert await explain(configured(clean_db), engine, event) == ["F-1 → skipped: already_forwarded"]


async def test_an_appointment_shows_the_forward_and_the_lead_link(clean_db: str, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(ContactMappingRow).values(
                ghl_contact_id="ghlContactAda0000001",
                phone_number="+15555550101",
                email="ada@example.com",
                sync_direction="ghl_to_aloware",
            )
        )
    lines = await explain(configured(clean_db), engine, ghl_event("ghl/AppointmentCreate.json"))
    assert [line for line in lines if line.startswith("AP ")] == [
        "AP FindVerityContact(phone='+15555550101', email='ada@example.com')"
        "  [Verity's database not read in a dry run: assumed found]",
        "AP LinkLead(verity_contact_id='<verity contact found by phone/e-mail>', "
        "appointment_id='ghlApptDemo000000001')",
        "AP ReachedBroadcasts(verity_contact_id='<verity contact found by phone/e-mail>')"
        "  [Verity's database not read in a dry run]",
        "AP PublishAnalyticsUpdate(broadcast_id='<each broadcast that reached it>', "
        "appointment_id='ghlApptDemo000000001', ghl_contact_id='ghlContactAda0000001')",
        "AP LogSync(rule='AP', status='success', subject=ghl_to_verity/appointment/ghlApptDemo000000001, "
        "target_id='<verity contact found by phone/e-mail>', "
        "details={'broadcasts': ['<each broadcast that reached it>']})",
        "AP → applied",
    ]
    assert lines[-1 - 6] == "F-1 → applied"


async def test_an_agent_sms_shows_its_send_and_an_opted_out_one_its_refusal(clean_db: str, engine: AsyncEngine) -> None:
    event = provider_event("ghl-provider-delivery/ProviderOutboundMessage-sms.json")
    assert await explain(configured(clean_db), engine, event) == [
        "M-2 SendSmsOnce(source_id='ghlMsgDemo0000000002', to='+15555550101', body=<47 characters>, "
        "ghl_contact_id='ghlContactAda0000001', log=LogSync(rule='M-2', status='success', "
        "subject=ghl_to_texting/message/ghlMsgDemo0000000002))  [assumed: Verity sends it]",
        "M-2 → applied",
    ]
    assert (await explain(Settings(database_url=clean_db), engine, event))[-1] == (
        "M-2 → dead: VERITY_API_KEY / VERITY_BASE_URL are not set"
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(OptoutRegistryRow).values(phone_number="+15555550101", status="opted_out", source="texting")
        )
    assert await explain(configured(clean_db), engine, event) == [
        "M-2 LogSync(rule='M-2', status='skipped', subject=ghl_to_texting/message/ghlMsgDemo0000000002, "
        "message='recipient_opted_out')",
        "M-2 ReportStatus(ghl_message_id='ghlMsgDemo0000000002', status='failed', error={'code': 'opted_out', "
        "'type': 'saas', 'message': 'Recipient has opted out of SMS'})",
        "M-2 → skipped: recipient_opted_out",
    ]


async def test_an_event_verity_sync_does_not_take_has_no_plan(clean_db: str, engine: AsyncEngine) -> None:
    aloware = ghl_event("ghl/ContactUpdate.json").model_copy(update={"source": "aloware"})
    assert await explain(configured(clean_db), engine, aloware) == []
