"""Stream sequences above 2^31 (issue #14 item 7).

JetStream sequences are unsigned 64-bit. A stream that has taken two billion messages in
its life (purged or aged out since: ``first_seq`` keeps growing) hands the recorder and the
consumers sequences that do not fit PostgreSQL's int4; with the columns in int4 every insert
failed, every message was NAKed and the pipeline stopped. Here the test's own WEBHOOKS
stream is moved past 2^31 with a purge (``seq``: the next message gets that sequence),
then an event goes through the real ingress and the recorder, or a real consumer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import nats

from contracts.streams import WEBHOOKS
from services.infra.broker import prepare_topology
from services.infra.settings import Settings
from services.sandbox.app import create_sandbox_app
from services.tooling.embedded import EmbeddedNats
from services.tooling.sender import refresh, sign
from tests.conftest import load_fixture
from tests.support.ingress_rig import (
    Keys,
    Signer,
    dumps,
    running_ingress,
    running_recorder,
    serving,
    wait_for_row,
)
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import consumers, eventually, pipeline_settings

KEYS = Keys.generate()
HIGH_SEQ = 2**31 + 17  # past int4 (2 147 483 647)


async def move_stream_past(nats_url: str, settings: Settings, seq: int) -> None:
    """Create the streams as the services do, then make ``seq`` the next WEBHOOKS sequence."""
    await prepare_topology(settings)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.purge_stream(WEBHOOKS.name, seq=seq)
        info = await js.stream_info(WEBHOOKS.name)
        assert info.state.first_seq == seq  # the purge did what the test relies on
    finally:
        await nc.close()


async def test_the_recorder_writes_a_row_for_a_sequence_above_2_31(
    base_env: dict[str, str], nats_server: EmbeddedNats, clean_db: str
) -> None:
    env = {**base_env, **KEYS.env()}
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    await move_stream_past(nats_server.url, settings, HIGH_SEQ)
    payload = refresh(load_fixture("ghl/ContactUpdate.json"), "ghl")
    body = dumps(payload)
    async with (
        running_recorder(settings),
        running_ingress(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        answer = await client.post("/api/webhooks/ghl", content=body, headers=Signer(KEYS, env).ghl(body))
        assert answer.status_code == 200, answer.text
        row = await wait_for_row(clean_db, "webhook_events", answer.json()["id"])
    assert row["stream_seq"] == HIGH_SEQ


async def test_a_consumer_first_to_an_event_records_a_sequence_above_2_31(
    base_env: dict[str, str], nats_server: EmbeddedNats, clean_db: str, tmp_path: Path
) -> None:
    """No recorder: the aloware-sync consumer's claim inserts the event row itself, and its
    attempt row carries the sequence too (``dfm trace``)."""
    settings = pipeline_settings(base_env, tmp_path)
    await move_stream_past(nats_server.url, settings, HIGH_SEQ)
    payload = refresh(load_fixture("aloware/contact-created.json"), "aloware")
    body = json.dumps(payload).encode()
    async with (
        serving(create_sandbox_app(settings), "/_sandbox/calls", port=settings.sandbox_port),
        consumers(settings, 1),
        running_ingress(settings, port=settings.ingress_port) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        request = sign(settings, "aloware", body)
        answer = await client.post(request.path, content=body, headers=request.headers, params=request.params)
        assert answer.status_code == 200, answer.text
        event_id = answer.json()["id"]

        async def finished() -> list[dict[str, Any]]:
            return await fetch(
                clean_db,
                "SELECT stream_seq, status FROM webhook_events WHERE id = $1::uuid AND status IN ('done', 'dead')",
                event_id,
            )

        [row] = await eventually(finished, timeout=30)
    assert row == {"stream_seq": HIGH_SEQ, "status": "done"}
    attempts = await fetch(clean_db, "SELECT stream_seq FROM event_attempts WHERE event_id = $1::uuid", event_id)
    assert attempts and {a["stream_seq"] for a in attempts} == {HIGH_SEQ}
