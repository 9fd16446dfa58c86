"""A rule's success and skip ``sync_log`` rows are written by the ledger's finish statement,
with the attempt's end state (issue #18, one round trip fewer per rule): on every end (done,
error, dead), with the fields the rule gave; an error row, and any row outside a delivery, at
once. And the echo record a GHL write leaves in the mapping upsert. Against the real
PostgreSQL, through ``DeliveryLedger`` and ``store``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from services.domain import store
from services.infra.db.session import create_engine
from services.infra.delivery import DeliveryLedger, Failure, Outcome
from services.infra.errors import MappingConflict
from services.infra.settings import Settings
from services.infra.trace import CURRENT, AttemptTrace, defer_sync_row
from tests.support.jobs import probe_event
from tests.support.jobs_rig import fetch


@pytest.fixture
async def engine(clean_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=clean_db))
    yield engine
    await engine.dispose()


async def log(engine: AsyncEngine, event: WebhookEvent, status: str, rule: str, **extra: Any) -> None:
    async with engine.begin() as conn:
        await store.log_sync(
            conn,
            direction="aloware_to_ghl",
            entity_type="contact",
            source_id="7000042",
            status=status,
            started_at=datetime.now(UTC) - timedelta(seconds=1),
            correlation_id=str(event.event_id),
            rule=rule,
            attempt=1,
            **extra,
        )


async def rows(db: str) -> list[dict[str, Any]]:
    return await fetch(
        db,
        "SELECT rule, status, target_id, error_message, details, started_at, finished_at, attempt, "
        "correlation_id FROM sync_log ORDER BY finished_at",
    )


@pytest.mark.parametrize("end", ["done", "error", "dead"])
async def test_the_rows_of_a_delivery_are_written_with_its_end(end: str, engine: AsyncEngine, clean_db: str) -> None:
    settings = Settings(database_url=clean_db)
    ledger = DeliveryLedger(engine, "ghl-sync", settings)
    event = probe_event(42)
    claim = await ledger.begin(event, 7)
    assert claim.attempt == 1
    trace = AttemptTrace(stream_seq=7, num_delivered=1)
    token = CURRENT.set(trace)
    try:
        await log(engine, event, "skipped", "LP-1", message="middleware-originated")
        await log(engine, event, "success", "CA", target_id="ghlX", details={"decisions": [{"field": "city"}]})
    finally:
        CURRENT.reset(token)
    assert await rows(clean_db) == []  # left to the finish
    if end == "done":
        await ledger.finish(event, "done", outcome=Outcome("applied"), attempt=1, trace=trace)
    elif end == "error":
        await ledger.finish(
            event,
            "error",
            error="ghl 503",
            next_attempt_at=datetime.now(UTC),
            attempt=1,
            trace=trace,
            failure=Failure("ghl 503"),
        )
    else:
        await ledger.finish(event, "dead", error="invalid", attempt=1, trace=trace, failure=Failure("invalid"))
    written = await rows(clean_db)
    ours = [r for r in written if r["rule"] is not None]
    assert [(r["rule"], r["status"], r["target_id"], r["error_message"]) for r in ours] == [
        ("LP-1", "skipped", None, "middleware-originated"),
        ("CA", "success", "ghlX", None),
    ]
    assert ours[1]["details"] in ({"decisions": [{"field": "city"}]}, '{"decisions": [{"field": "city"}]}')
    assert all(r["correlation_id"] == str(event.event_id) and r["attempt"] == 1 for r in ours)
    assert all(r["started_at"] < r["finished_at"] <= datetime.now(UTC) for r in ours)
    # a failed end adds the ledger's own error row (no rule wrote one)
    assert [r["status"] for r in written if r["rule"] is None] == ([] if end == "done" else ["error"])
    [attempt] = await fetch(clean_db, "SELECT status FROM event_attempts WHERE event_id = $1", event.event_id)
    assert attempt["status"] == end


async def test_error_rows_markers_and_rows_outside_a_delivery_are_written_at_once(
    engine: AsyncEngine, clean_db: str
) -> None:
    event = probe_event(43)
    await log(engine, event, "success", "O-5a")  # no delivery: the gateway's rows
    token = CURRENT.set(AttemptTrace())
    try:
        await log(engine, event, "error", "M-1", message="GHL refused the message")
        await log(engine, event, "success", "F-1", immediate=True)  # a marker the rule reads back
    finally:
        CURRENT.reset(token)
    assert [(r["rule"], r["status"]) for r in await rows(clean_db)] == [
        ("O-5a", "success"),
        ("M-1", "error"),
        ("F-1", "success"),
    ]


# --- a GHL write's echo record rides on the mapping upsert (issue #18) -------------------------


async def test_the_echo_record_with_the_mapping_is_kept_when_the_mapping_conflicts(
    engine: AsyncEngine, clean_db: str
) -> None:
    """The write happened either way: a CA-7 conflict still leaves its echo recorded."""

    async def mapped(conn: Any, aloware_id: str, *echo: str) -> None:
        await store.upsert_mapping(
            conn,
            ghl_id="ghlE",
            aloware_id=aloware_id,
            phone=None,
            email=None,
            direction="aloware_to_ghl",
            echo_hashes=echo,
        )

    async with engine.connect() as conn:
        await mapped(conn, "7000001", "h1", "h1-body")  # a GHL write's two hashes (ghl_write_hashes)
        await conn.commit()
        with pytest.raises(MappingConflict):
            await mapped(conn, "7000002", "h2", "h2-body")
        await conn.commit()
        for recorded in ("h1", "h1-body", "h2", "h2-body"):
            assert await store.is_echo(conn, "ghl", "ghlE", recorded, 60)
        assert not await store.is_echo(conn, "ghl", "ghlE", "h3", 60)
    [mapping] = await fetch(clean_db, "SELECT aloware_contact_id FROM contact_mappings WHERE ghl_contact_id = 'ghlE'")
    assert mapping["aloware_contact_id"] == "7000001"


async def test_a_row_postgresql_refuses_does_not_keep_the_attempt_from_ending(
    engine: AsyncEngine, clean_db: str
) -> None:
    """A NUL in a deferred row (PostgreSQL's text refuses it): the end is written without the
    rows, the loss logged, instead of the finish failing on every redelivery."""
    ledger = DeliveryLedger(engine, "ghl-sync", Settings(database_url=clean_db))
    event = probe_event(44)
    await ledger.begin(event, 9)
    trace = AttemptTrace(stream_seq=9, num_delivered=1)
    token = CURRENT.set(trace)
    try:
        await log(engine, event, "skipped", "CA", message="bad\x00value")
    finally:
        CURRENT.reset(token)
    await ledger.finish(event, "done", outcome=Outcome("skipped", "no_changes"), attempt=1, trace=trace)
    [delivery] = await fetch(clean_db, "SELECT status FROM event_deliveries WHERE event_id = $1", event.event_id)
    assert delivery["status"] == "done"
    assert await rows(clean_db) == []


def test_details_json_cannot_encode_fail_in_the_rule() -> None:
    token = CURRENT.set(AttemptTrace())
    try:
        with pytest.raises(TypeError):
            defer_sync_row({"details": {"at": datetime.now(UTC)}})
    finally:
        CURRENT.reset(token)
