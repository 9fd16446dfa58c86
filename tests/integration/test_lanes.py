"""ghl-sync's lanes on real NATS, PostgreSQL and the sandbox (issue #18): a STOP sent after a
bulk backlog of contact syncs reaches GHL long before the backlog has drained; the topology
step moves an existing single durable to two lanes without losing or replaying contacts; and
`dfm lanes` shows each lane's backlog and drain time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import pytest

from contracts.lanes import LANES
from contracts.streams import GHL_SYNC, GHL_SYNC_BULK, GHL_SYNC_FILTERS, WEBHOOKS_STREAM, ConsumerSpec
from contracts.subjects import subject_matches
from services.infra.broker import TopologyDowngrade, apply_topology, consumer_config
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedNats
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.contacts import aloware_contact, send_aloware
from tests.support.jobs import cli, probe_event
from tests.support.jobs_rig import execute, fetch
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline

BACKLOG = 300


def _is_backlog_write(call: dict[str, Any]) -> bool:
    """A write of one of the backlog's contacts (only they carry an e-mail address)."""
    return call["method"] in ("POST", "PUT") and "@example.com" in json.dumps(call.get("body"))


def _is_stop_write(call: dict[str, Any]) -> bool:
    """The STOP's effect in GHL: the SMS opt-out tags on its contact (spec/outbound.md O-2)."""
    return call["method"] in ("POST", "PUT") and "DNC-SMS" in json.dumps(call.get("body"))


async def _texting_done(db: str, event_id: str) -> bool:
    rows = await fetch(db, "SELECT status FROM texting_webhook_events WHERE id = $1::uuid", event_id)
    return bool(rows) and rows[0]["status"] == "done"


async def test_a_stop_sent_after_a_bulk_backlog_reaches_ghl_before_the_backlog_drains(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    # 3 GHL requests/s: the backlog (≥ 2 requests a contact) takes over three minutes
    settings = pipeline_settings(base_env, tmp_path, GHL_RATE_LIMIT_PER_10S="30")
    async with running_pipeline(settings) as p:
        for start in range(0, BACKLOG, 50):  # accepted in order, 50 at a time
            await asyncio.gather(*(send_aloware(p, aloware_contact(n)) for n in range(start, start + 50)))
        stop = await send_texting(p, load_fixture("texting/optout.stop.json"))
        await eventually(lambda: _texting_done(clean_db, stop["id"]), timeout=90)
        calls = await p.calls("ghl")
        first_stop = next(i for i, c in enumerate(calls) if _is_stop_write(c))
        written_before = sum(_is_backlog_write(c) for c in calls[:first_stop])
        # with one FIFO the STOP waited behind ~all 300 contacts; in its own lane it waits for
        # at most the few bulk deliveries in hand
        assert written_before < BACKLOG // 4, written_before
        assert sum(_is_backlog_write(c) for c in calls) < BACKLOG  # the backlog is still draining


async def test_the_topology_step_moves_one_durable_to_two_lanes_without_losing_or_replaying_contacts(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    settings = Settings(nats_url=nats_server.url)
    old = ConsumerSpec(
        "ghl-sync", WEBHOOKS_STREAM, GHL_SYNC_FILTERS, "before lanes", max_deliver=50, max_ack_pending=100
    )
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.delete_consumer(WEBHOOKS_STREAM, GHL_SYNC_BULK.durable)
        await js.add_consumer(WEBHOOKS_STREAM, consumer_config(old))
        first, *rest = [probe_event(n) for n in range(3)]
        await js.publish(first.subject, first.to_bytes(), headers=first.nats_headers())
        sub = await js.pull_subscribe_bind(old.durable, stream=WEBHOOKS_STREAM)
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack_sync()  # handled before the upgrade
        await sub.unsubscribe()
        for event in rest:  # queued, not yet handled
            await js.publish(event.subject, event.to_bytes(), headers=event.nats_headers())
        call = load_fixture("aloware/call-disposed.json")
        await js.publish("webhooks.aloware.call.call_disposed", json.dumps(call).encode())

        await apply_topology(js, settings)  # `dfm migrate upgrade`

        realtime = await js.consumer_info(WEBHOOKS_STREAM, GHL_SYNC.durable)
        bulk = await js.consumer_info(WEBHOOKS_STREAM, GHL_SYNC_BULK.durable)
        assert sorted(realtime.config.filter_subjects or []) == sorted(GHL_SYNC.filter_subjects)
        assert sorted(bulk.config.filter_subjects or []) == sorted(GHL_SYNC_BULK.filter_subjects)
        assert bulk.num_pending == len(rest)  # the two queued contacts, not the one handled
        assert realtime.num_pending == 1  # the call
        await apply_topology(js, settings)  # again: nothing changes, nothing is refused
        assert (await js.consumer_info(WEBHOOKS_STREAM, GHL_SYNC_BULK.durable)).num_pending == len(rest)
    finally:
        await nc.close()


async def test_a_recreated_bulk_durable_starts_from_the_stream_not_after_the_realtime_lane(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    """Once the lanes are split, ``ghl-sync``'s ack floor says nothing of contact events: a bulk
    durable deleted (an operator resetting a wedged lane) and made again starts at the stream's
    beginning, and the ledger acks what was finished."""
    settings = Settings(nats_url=nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        contacts = [probe_event(n) for n in range(3)]
        for event in contacts:
            await js.publish(event.subject, event.to_bytes(), headers=event.nats_headers())
        call = load_fixture("aloware/call-disposed.json")
        await js.publish("webhooks.aloware.call.call_disposed", json.dumps(call).encode())
        realtime = await js.pull_subscribe_bind(GHL_SYNC.durable, stream=WEBHOOKS_STREAM)
        [msg] = await realtime.fetch(1, timeout=5)
        await msg.ack_sync()  # the real-time lane is past every contact event
        await realtime.unsubscribe()
        await js.delete_consumer(WEBHOOKS_STREAM, GHL_SYNC_BULK.durable)

        await apply_topology(js, settings)

        bulk = await js.consumer_info(WEBHOOKS_STREAM, GHL_SYNC_BULK.durable)
        assert bulk.num_pending == len(contacts)  # none skipped
    finally:
        await nc.close()


async def test_moving_a_subject_out_of_a_lane_with_a_backlog_is_refused(
    nats_server: EmbeddedNats, clean_streams: None
) -> None:
    """The lane that would take the subject is already past those messages: moving it while
    they wait would leave them to the sweep. Refused, naming the lane; once it is empty, done."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        event = probe_event(1)  # contact_created: bulk by default
        await js.publish(event.subject, event.to_bytes(), headers=event.nats_headers())
        everything_realtime = Settings(nats_url=nats_server.url, dfm_bulk_subjects=[])
        with pytest.raises(TopologyDowngrade, match=r"ghl-sync-bulk.*1 message"):
            await apply_topology(js, everything_realtime)
        bulk = await js.consumer_info(WEBHOOKS_STREAM, GHL_SYNC_BULK.durable)
        assert sorted(bulk.config.filter_subjects or []) == sorted(GHL_SYNC_BULK.filter_subjects)  # unchanged

        sub = await js.pull_subscribe_bind(GHL_SYNC_BULK.durable, stream=WEBHOOKS_STREAM)
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack_sync()
        await sub.unsubscribe()
        await apply_topology(js, everything_realtime)  # the lane is empty: moved
        realtime = await js.consumer_info(WEBHOOKS_STREAM, GHL_SYNC.durable)
        assert any(subject_matches(f, event.subject) for f in realtime.config.filter_subjects or [])
    finally:
        await nc.close()


async def test_dfm_lanes_shows_each_lane_s_backlog_and_drain_time(
    nats_server: EmbeddedNats, base_env: dict[str, str]
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for event in [probe_event(n) for n in range(4)]:
            await js.publish(event.subject, event.to_bytes(), headers=event.nats_headers())
    finally:
        await nc.close()
    env = {**base_env, "GHL_RATE_LIMIT_PER_10S": "80", "DFM_LANE_REQUESTS_PER_EVENT": "2"}
    shown = cli(env, "lanes", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    lanes = {row["lane"]: row for row in answer["lanes"]}
    assert set(lanes) == set(LANES)
    assert (lanes["bulk"]["durable"], lanes["bulk"]["pending"], lanes["bulk"]["drainSeconds"]) == (
        "ghl-sync-bulk",
        4,
        1.0,
    )
    assert (lanes["realtime"]["durable"], lanes["realtime"]["pending"]) == ("ghl-sync", 0)
    table = cli(env, "lanes")
    assert table.returncode == 0 and "ghl-sync-bulk" in table.stdout and "1s" in table.stdout, table.stdout
    # once the budget has learned GHL's window (any replica), the drain time is at that rate
    await execute(
        base_env["DATABASE_URL"],
        "INSERT INTO rate_budgets (key, learned_max, learned_interval_ms) VALUES ($1, 200, 10000)",
        f"ghl:{base_env['GHL_LOCATION_ID']}",
    )
    learned = json.loads(cli(env, "lanes", "-o", "json").stdout)
    assert learned["budgetPerSecond"] == round(int(200 * 0.98) / 10.2, 2), learned  # 19.22
    assert {r["lane"]: r["drainSeconds"] for r in learned["lanes"]}["bulk"] == round(4 * 2 / 19.22, 1)


@pytest.mark.parametrize("service", ["ingress", "aloware-sync"])
def test_lane_is_an_option_of_ghl_sync_only(service: str, base_env: dict[str, str]) -> None:
    refused = cli(base_env, "run", service, "--lane", "bulk")
    assert refused.returncode == 2 and "--lane is an option of ghl-sync only" in refused.stderr
