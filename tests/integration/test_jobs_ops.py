"""Jobs service, operator side: alerts once per incident, dead letters from JetStream
advisories, index-only sweep selections, and ``dfm trace``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.dialects import postgresql
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contracts.envelope import WebhookEvent
from services.infra.db.session import create_engine
from services.infra.settings import Settings
from services.jobs.alerts import Alerter
from services.jobs.sweep import Sweeper
from tests.support.contacts import aloware_contact, send_aloware
from tests.support.ingress_rig import running_recorder, serving
from tests.support.jobs import (
    cli,
    probe_event,
)
from tests.support.jobs_rig import execute, fetch, running_jobs
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline


# --- alerts ----------------------------------------------------------------------------------
@pytest.fixture
async def alert_sink() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({"ok": True})

    async def ready(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/ready", ready)])
    async with serving(app, "/ready") as url:
        yield f"{url}/hook", received


async def add_pending(db: str, count: int) -> None:
    await execute(
        db,
        """
        INSERT INTO webhook_events (received_at, source, event_type, event_token, canonical_type, entity_type,
            entity_id, payload_json, dedupe_key, status)
        SELECT now() - interval '1 hour', 'aloware', 'Contact Created', 'contact_created', 'contact.created',
               'contact', 'e' || g, '{}'::jsonb, 'alert:' || gen_random_uuid(), 'pending'
        FROM generate_series(1, $1) g""",
        count,
    )


async def test_alerts_fire_once_per_incident_escalate_and_recover(
    base_env: dict[str, str], clean_db: str, alert_sink: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = alert_sink
    settings = Settings(**{k.lower(): v for k, v in base_env.items()}, alert_webhook_url=url)
    engine = create_engine(settings)
    replicas = [Alerter(settings, engine), Alerter(settings, engine)]
    try:

        async def check_all() -> None:  # two jobs replicas evaluating at the same moment
            await asyncio.gather(*(a.check() for a in replicas))

        await check_all()
        assert received == []
        await add_pending(clean_db, 600)
        await check_all()
        await check_all()
        backlog = [r for r in received if r["metadata"]["key"] == "pending_events"]
        assert [(r["level"], r["title"]) for r in backlog] == [("warning", "Pending events backlog")]
        assert backlog[0]["message"] == "600 events pending"
        assert {"level", "title", "message", "timestamp", "metadata"} <= backlog[0].keys()
        delay = [r for r in received if r["metadata"]["key"] == "processing_delay"]
        assert [r["level"] for r in delay] == ["warning"]  # oldest pending is an hour old

        await add_pending(clean_db, 500)
        await check_all()
        backlog = [r for r in received if r["metadata"]["key"] == "pending_events"]
        assert [r["level"] for r in backlog] == ["warning", "critical"]

        await execute(clean_db, "UPDATE webhook_events SET status = 'done', outcome = 'skipped'")
        await check_all()
        await check_all()
        backlog = [r for r in received if r["metadata"]["key"] == "pending_events"]
        assert [r["level"] for r in backlog] == ["warning", "critical", "info"]
        assert backlog[-1]["metadata"]["resolved"] is True
        assert backlog[-1]["title"] == "Resolved: Pending events backlog"
        incidents = await fetch(clean_db, "SELECT key, resolved_at FROM alert_incidents ORDER BY key")
        assert {i["key"] for i in incidents} == {"pending_events", "processing_delay"}
        assert all(i["resolved_at"] is not None for i in incidents)
    finally:
        for a in replicas:
            await a.aclose()
        await engine.dispose()


async def test_an_undeliverable_alert_is_retried_at_the_next_check(
    base_env: dict[str, str], clean_db: str, alert_sink: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = alert_sink
    broken = Settings(**{k.lower(): v for k, v in base_env.items()}, alert_webhook_url=url + "/missing")
    engine = create_engine(broken)
    try:
        await add_pending(clean_db, 501)
        await Alerter(broken, engine).check()  # 404 from the receiver: not delivered
        assert received == []
        fixed = Settings(**{k.lower(): v for k, v in base_env.items()}, alert_webhook_url=url)
        await Alerter(fixed, engine).check()
        assert [r["metadata"]["key"] for r in received if r["level"] == "warning"].count("pending_events") == 1
    finally:
        await engine.dispose()


# --- dead letters ----------------------------------------------------------------------------


async def test_dead_letters_are_recorded_with_their_reason(settings: Settings, clean_db: str) -> None:
    async with running_recorder(settings), running_jobs(settings, consume=False):
        nc = await nats.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            # a body that is not an envelope: the recorder terminates it
            await js.publish(
                "webhooks.aloware.contact.contact_created", b"{not json", headers={"Nats-Msg-Id": "garbage-1"}
            )
            # a real event nobody acknowledges: JetStream gives up after max_deliver
            await js.add_consumer(
                "WEBHOOKS",
                ConsumerConfig(
                    durable_name="dl-probe",
                    filter_subject="webhooks.aloware.contact.contact_created",
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=0.5,
                    max_deliver=2,
                ),
            )
            event = probe_event(61)
            await js.publish(event.subject, event.to_bytes(), headers=event.nats_headers())
            probe = await js.pull_subscribe_bind("dl-probe", stream="WEBHOOKS")

            async def both() -> list[dict[str, Any]] | None:
                # keep a pull request waiting: the server notices max_deliver when it would
                # redeliver, which a pull consumer does only for a waiting request
                with contextlib.suppress(TimeoutError):
                    await probe.fetch(2, timeout=0.5)
                found = await fetch(clean_db, "SELECT * FROM dead_letters ORDER BY kind, stream_seq")
                return found if {r["kind"] for r in found} >= {"max_deliveries", "terminated"} else None

            letters = await eventually(both)

            async def delivery_dead() -> list[dict[str, Any]]:
                return await fetch(
                    clean_db,
                    "SELECT status, last_error FROM event_deliveries WHERE consumer = 'dl-probe' AND status = 'dead'",
                )

            [delivery] = await eventually(delivery_dead)
        finally:
            await nc.close()
    terminated = [r for r in letters if r["kind"] == "terminated"]
    assert [(r["consumer"], r["event_id"]) for r in terminated] == [("recorder", None)]
    assert "not a readable event envelope" in terminated[0]["reason"]
    maxed = [r for r in letters if r["kind"] == "max_deliveries" and r["event_id"] == event.event_id]
    assert len(maxed) == 1 and maxed[0]["consumer"] == "dl-probe" and maxed[0]["deliveries"] == 2
    assert "stopped redelivering after 2 deliveries" in maxed[0]["reason"]
    assert "2 deliveries" in delivery["last_error"]


async def test_a_dead_letter_of_a_lane_durable_ends_the_services_delivery(settings: Settings, clean_db: str) -> None:
    """The advisory names the durable (``ghl-sync-bulk``); the delivery is ghl-sync's (both lanes
    record under the service): it ends dead there, with no stray row under the durable's name."""
    async with running_recorder(settings), running_jobs(settings, consume=False) as jobs:
        nc = await nats.connect(settings.nats_url)
        try:
            event = probe_event(62)
            ack = await nc.jetstream().publish(event.subject, event.to_bytes(), headers=event.nats_headers())

            async def recorded() -> list[dict[str, Any]]:
                return await fetch(clean_db, "SELECT id FROM webhook_events WHERE id = $1", event.event_id)

            await eventually(recorded)
            await jobs.record_dead_letter("WEBHOOKS", "ghl-sync-bulk", ack.seq, "max_deliveries", {"deliveries": 50})
        finally:
            await nc.close()
    deliveries = await fetch(
        clean_db, "SELECT consumer, status FROM event_deliveries WHERE event_id = $1", event.event_id
    )
    assert [(d["consumer"], d["status"]) for d in deliveries] == [("ghl-sync", "dead")], deliveries
    [letter] = await fetch(clean_db, "SELECT consumer FROM dead_letters WHERE event_id = $1", event.event_id)
    assert letter["consumer"] == "ghl-sync-bulk"  # where JetStream gave up


# --- sweep cost ------------------------------------------------------------------------------
async def test_sweep_selections_use_indexes_not_scans_of_done_rows(settings: Settings, clean_db: str) -> None:
    await execute(
        clean_db,
        """
        INSERT INTO webhook_events (received_at, source, event_type, event_token, canonical_type, entity_type,
            entity_id, payload_json, dedupe_key, status, outcome, processed_at)
        SELECT now() - g * interval '1 second', 'aloware', 'Contact Created', 'contact_created',
               'contact.created', 'contact', 'e' || g, '{}'::jsonb, 'done:' || g, 'done', 'applied', now()
        FROM generate_series(1, 50000) g""",
    )
    await execute(
        clean_db,
        """
        INSERT INTO webhook_events (received_at, source, event_type, event_token, canonical_type, entity_type,
            entity_id, payload_json, dedupe_key, status, attempts, claimed_at, next_attempt_at)
        SELECT now() - interval '1 hour', 'aloware', 'Contact Created', 'contact_created', 'contact.created',
               'contact', 's' || g, '{}'::jsonb, 'stuck:' || g, (ARRAY['pending','processing','error'])[g % 3 + 1],
               g % 12, now() - interval '2 hours', now() - interval '1 minute'
        FROM generate_series(1, 60) g""",
    )
    await execute(clean_db, "ANALYZE webhook_events")
    engine = create_engine(settings)
    sweeper = Sweeper(settings, engine, js=None)  # type: ignore[arg-type]  # selections only
    try:
        for step in ("S1", "S2", "S3", "S4"):
            sql = str(
                sweeper.selection("webhook", step).compile(
                    dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
                )
            )
            plan = "\n".join(r["QUERY PLAN"] for r in await fetch(clean_db, "EXPLAIN " + sql))
            assert "Seq Scan on webhook_events" not in plan, (step, plan)
            assert "Index" in plan, (step, plan)
    finally:
        await engine.dispose()


# --- trace -----------------------------------------------------------------------------------
async def test_trace_shows_the_life_of_an_event(base_env: dict[str, str], tmp_path: Path, clean_db: str) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await p.sandbox.post(
            "/_sandbox/faults", json={"vendor": "ghl", "count": 1, "status": 503, "path_contains": "/contacts/"}
        )
        ident = (await send_aloware(p, aloware_contact(71)))["id"]

        async def finished() -> bool:
            found = await fetch(clean_db, "SELECT status FROM webhook_events WHERE id = $1::uuid", ident)
            return bool(found) and found[0]["status"] == "done"

        await eventually(finished)
    [row] = await fetch(clean_db, "SELECT stream_seq FROM webhook_events WHERE id = $1::uuid", ident)
    seq = row["stream_seq"]
    result = cli(base_env, "trace", ident)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"event {ident}  aloware Contact Created (contact.created)" in out
    assert f"received; stream seq {seq};" in out
    assert f"ghl-sync attempt 1 (stream seq {seq}, delivery #1)" in out
    assert "POST   /contacts/  → 503" in out
    assert "ghl-sync → error" in out and "ghl 503" in out
    assert f"ghl-sync attempt 2 (stream seq {seq}, delivery #2)" in out
    assert "POST   /contacts/  → 201" in out
    assert "mapping contact upserted: ghl_contact_id=" in out and "aloware_contact_id=8000071" in out
    assert "ghl-sync → done applied" in out
    assert "sync_log CA aloware_to_ghl success 8000071" in out
    assert "event status done applied" in out
    shown = json.loads(cli(base_env, "trace", ident, "--json").stdout)
    assert [a["status"] for a in shown["attemptLog"]] == ["error", "done"]


# --- outbox (S5) -----------------------------------------------------------------------------
async def test_the_sweep_drains_an_outbox_left_behind(settings: Settings, clean_db: str) -> None:
    """An ingress accepted an event into the outbox and died before draining it (S5)."""
    event = probe_event(91)
    headers = json.dumps(event.nats_headers())
    await execute(
        clean_db,
        "INSERT INTO ingress_outbox (subject, dedupe_key, headers, body) VALUES ($1, $2, $3::jsonb, $4)",
        event.subject,
        event.dedupe_key,
        headers,
        event.to_bytes(),
    )
    async with running_jobs(settings, consume=False) as jobs:
        from contracts.commands import SweepRequested

        report = await jobs.execute(SweepRequested())
        assert report.outbox == 1
        again = await jobs.execute(SweepRequested())
        assert again.outbox == 0
        msg = await jobs.js.get_last_msg("WEBHOOKS", event.subject)
        assert WebhookEvent.from_bytes(msg.data).event_id == event.event_id
    [row] = await fetch(clean_db, "SELECT published_at FROM ingress_outbox")
    assert row["published_at"] is not None
