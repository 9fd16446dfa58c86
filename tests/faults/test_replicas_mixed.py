"""Three replicas of every consumer with every event delivered twice, interleaved, end in the
same vendor state and the same rows as one replica with one delivery each (issue: the rest
of the domain, "must show" 3).

The mixed set has three phases (contacts; calls, DNC, opt-outs and texts; call artifacts and
dispositions), each sent through the ingress and then re-published once more in shuffled
order while the first deliveries are still being worked on. A phase waits for the previous
one, as a note needs its contact; within a phase anything may run in any order.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import asyncpg
import nats

from contracts.envelope import WebhookEvent
from services.infra.db.models import Base
from services.infra.db.session import sync_url
from services.infra.redrive import publish_redrive
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.contacts import aloware_contact, send_aloware
from tests.support.jobs_rig import fetch, running_jobs
from tests.support.messages import install
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

CONTACTS = range(1, 7)
GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}


def phase_events() -> list[list[tuple[str, dict[str, Any]]]]:
    contacts = [("aloware", aloware_contact(600 + n, first=f"Mix{n}")) for n in CONTACTS]
    middle: list[tuple[str, dict[str, Any]]] = []
    last: list[tuple[str, dict[str, Any]]] = []
    for n in CONTACTS:
        aloware_id, phone = str(8_000_600 + n), f"+1555555{600 + n:04d}"
        call = load_fixture("aloware/call-disposed.json")
        call["body"].update(
            id=str(9_700_000 + n),
            contact_id=aloware_id,
            lead_number=phone,
            disposition="Interested" if n % 2 else "Voicemail",
        )
        middle.append(("aloware", call))
        if n % 3 == 0:
            dnc = load_fixture("aloware/contact-dnc-updated.json")
            dnc["body"].update(id=aloware_id, phone_number=phone, updated_at=f"2026-01-0{n}T00:00:00+00:00")
            middle.append(("aloware", dnc))
        if n % 2 == 0:
            text = load_fixture("texting/message.received.json")
            middle.append(
                (
                    "texting",
                    {**text, "messageId": f"mixMsg-{n}", "from": phone, "body": "STOP" if n == 4 else f"hello {n}"},
                )
            )
        transcription = load_fixture("aloware/transcription-saved.json")
        transcription["body"].update(id=str(9_800_000 + n), call_id=str(9_700_000 + n), contact_id=aloware_id)
        last.append(("aloware", transcription))
        disposed = load_fixture("aloware/contact-disposed.json")
        disposed["body"].update(id=aloware_id, phone_number=phone, disposition_status=f"Stage {n % 3}")
        last.append(("aloware", disposed))
    return [contacts, middle, last]


async def send(p: Pipeline, source: str, payload: dict[str, Any]) -> str:
    if source == "aloware":
        return str((await send_aloware(p, payload))["id"])
    return str((await send_texting(p, payload))["id"])


async def run_mix(p: Pipeline, jobs: Any, db: str, *, duplicate: bool, seed: int) -> None:
    rng = random.Random(seed)
    for phase in phase_events():
        ids = [await send(p, source, payload) for source, payload in phase]
        if duplicate:
            rows = await fetch(
                db,
                "SELECT id, stream_seq FROM webhook_events WHERE id = ANY($1::uuid[]) UNION ALL "
                "SELECT id, stream_seq FROM texting_webhook_events WHERE id = ANY($1::uuid[])",
                ids,
            )
            while len(rows) < len(ids):  # recorded within moments; wait for the stream sequences
                await asyncio.sleep(0.05)
                rows = await fetch(
                    db,
                    "SELECT id, stream_seq FROM webhook_events WHERE id = ANY($1::uuid[]) "
                    "UNION ALL SELECT id, stream_seq FROM texting_webhook_events "
                    "WHERE id = ANY($1::uuid[])",
                    ids,
                )
            rng.shuffle(rows)
            for row in rows:
                event = WebhookEvent.from_bytes((await jobs.js.get_msg("WEBHOOKS", row["stream_seq"])).data)
                await publish_redrive(jobs.js, event, "dup")
        await eventually(lambda ids=ids: _all_finished(db, ids), timeout=60)
    await eventually(lambda: _quiet(db), timeout=60)


async def _all_finished(db: str, ids: list[str]) -> bool:
    rows = await fetch(
        db,
        "SELECT status FROM webhook_events WHERE id = ANY($1::uuid[]) UNION ALL "
        "SELECT status FROM texting_webhook_events WHERE id = ANY($1::uuid[])",
        ids,
    )
    return len(rows) == len(ids) and all(r["status"] in ("done", "dead") for r in rows)


async def _quiet(db: str) -> bool:
    """Every event (the vendors' echo webhooks included) has finished."""
    rows = await fetch(
        db,
        "SELECT count(*) AS n FROM webhook_events WHERE status NOT IN ('done', 'dead') "
        "UNION ALL SELECT count(*) FROM texting_webhook_events WHERE status NOT IN ('done', 'dead')",
    )
    return all(r["n"] == 0 for r in rows)


async def snapshot(p: Pipeline, db: str) -> dict[str, Any]:
    """Vendor state and rows by natural keys (vendor ids differ between runs)."""
    ghl = {c["phone"]: c for c in await p.ghl_contacts()}
    ghl_by_id = {c["id"]: c["phone"] for c in ghl.values()}
    notes: dict[str, list[str]] = {}
    for phone, contact in ghl.items():
        answer = await p.sandbox.get(f"/ghl/contacts/{contact['id']}/notes", headers=GHL)
        notes[phone] = sorted(n["body"] for n in answer.json()["notes"])
    conversations = (await p.sandbox.get("/_sandbox/ghl/conversations")).json()
    messages = sorted((ghl_by_id.get(m.get("contactId"), "?"), m.get("body")) for m in conversations["messages"])
    aloware = sorted((a["phone_number"], a.get("first_name")) for a in await p.aloware_contacts())
    mappings = await fetch(
        db,
        "SELECT phone_number, aloware_contact_id IS NOT NULL AS has_aloware, sync_direction, "
        "ghl_conversation_id IS NOT NULL AS has_conversation FROM contact_mappings "
        "ORDER BY phone_number",
    )
    activities = await fetch(
        db, "SELECT kind, source_id, ghl_note_id IS NOT NULL AS noted FROM activity_mappings ORDER BY kind, source_id"
    )
    messages_rows = await fetch(
        db, "SELECT texting_message_id, ghl_sync_status FROM message_mappings ORDER BY texting_message_id"
    )
    registry = await fetch(db, "SELECT phone_number, status, source, reason FROM optout_registry ORDER BY phone_number")
    events = await fetch(
        db,
        "SELECT canonical_type, status, outcome, count(*) AS n FROM webhook_events "
        "WHERE source = 'aloware' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    return {
        "ghl": {phone: {"first": c.get("firstName"), "tags": sorted(c.get("tags", []))} for phone, c in ghl.items()},
        "notes": notes,
        "messages": messages,
        "aloware": aloware,
        "mappings": mappings,
        "activities": activities,
        "message_rows": messages_rows,
        "registry": registry,
        "aloware_events": events,
    }


async def reset(db: str, nats_url: str) -> None:
    """An empty database and no streams (their duplicate windows would refuse the same bodies)."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    conn = await asyncpg.connect(sync_url(db))
    try:
        await conn.execute(f"TRUNCATE {tables}")
    finally:
        await conn.close()
    nc = await nats.connect(nats_url)
    try:
        for stream in ("WEBHOOKS", "JOBS"):
            await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def test_three_replicas_and_duplicate_deliveries_end_like_one_clean_run(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, CONTACT_SOURCE_OF_TRUTH="aloware")
    async with running_pipeline(settings, replicas=1) as p, running_jobs(settings) as jobs:
        await install(p)
        await run_mix(p, jobs, clean_db, duplicate=False, seed=1)
        single = await snapshot(p, clean_db)
    await reset(clean_db, base_env["NATS_URL"])
    async with running_pipeline(settings, replicas=3) as p, running_jobs(settings) as jobs:
        await install(p)
        await run_mix(p, jobs, clean_db, duplicate=True, seed=7)
        replicated = await snapshot(p, clean_db)
    assert len(single["ghl"]) == len(CONTACTS) and sum(len(n) for n in single["notes"].values()) == 12
    assert single["registry"] and single["messages"]  # the mix exercised opt-outs and texts
    for key in single:
        assert replicated[key] == single[key], (
            key,
            json.dumps(replicated[key], default=str)[:800],
            json.dumps(single[key], default=str)[:800],
        )
