"""`dfm replay --dry-run` prints a plan for an event of every rule family (issue #17): one
fixture per family goes through the real ingress and consumers, then the dry run over the
whole stream shows, per event, the plan lines of each service that takes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.tooling.sender import build_request
from tests.conftest import load_fixture
from tests.support.jobs import cli
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline

# fixture -> (its source, the plan lines that must be there: "<consumer> <rule id>")
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "aloware/contact-created.json": ("aloware", ("ghl-sync CA",)),
    "aloware/contact-updated.json": ("aloware", ("ghl-sync CA", "aloware-sync S")),
    "aloware/outbound-phone-call-completed.json": ("aloware", ("ghl-sync CL",)),
    "aloware/recording-saved.json": ("aloware", ("ghl-sync AR",)),
    "aloware/contact-disposed.json": ("aloware", ("ghl-sync D-2",)),
    "aloware/contact-dnc-updated.json": ("aloware", ("ghl-sync D-1",)),
    "texting/optout.stop.json": ("texting", ("ghl-sync O-2",)),
    "texting/message.received.json": ("texting", ("ghl-sync M-1",)),
    "texting/message.delivered.json": ("texting", ("ghl-sync M-4",)),
    "broadcast/analytics_updated.json": ("broadcast", ("ghl-sync B",)),
    "ghl/ContactUpdate.json": ("ghl", ("aloware-sync CG", "verity-sync F-1")),
    "ghl/AppointmentCreate.json": ("ghl", ("verity-sync AP",)),
    "ghl-provider-delivery/ProviderOutboundMessage-sms.json": ("ghl_provider", ("verity-sync M-2",)),
}


async def test_the_dry_run_prints_a_plan_for_an_event_of_every_family(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, DFM_SANDBOX_WEBHOOK_URL="")
    sent: dict[str, str] = {}  # event id -> fixture
    async with running_pipeline(settings) as p:
        for fixture, (source, _) in FAMILIES.items():
            raw = json.dumps(load_fixture(fixture)).encode()
            body, request = build_request(p.settings, raw, source, fresh=True)
            answer = await p.ingress.post(request.path, content=body, headers=request.headers, params=request.params)
            assert answer.status_code in (200, 202), (fixture, answer.status_code, answer.text)
            event_id = answer.json().get("id") or answer.json().get("eventId")
            assert event_id, (fixture, answer.json())
            sent[str(event_id)] = fixture

        async def recorded() -> bool:
            tables = ("webhook_events", "texting_webhook_events", "broadcast_webhook_events")
            rows: list[Any] = []
            for table in tables:
                rows += await fetch(clean_db, f"SELECT id FROM {table} WHERE status NOT IN ('pending', 'processing')")
            return {str(r["id"]) for r in rows} >= set(sent)

        await eventually(recorded)
        result = cli(base_env, "replay", "--subject", "webhooks.>", "--dry-run", "-o", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plans = {item["event_id"]: item.get("plan") or [] for item in report["items"]}
    for event_id, fixture in sent.items():
        lines = plans.get(event_id)
        assert lines, (fixture, [i for i in report["items"] if i["event_id"] == event_id] or sorted(plans))
        for wanted in FAMILIES[fixture][1]:
            assert any(line.startswith(wanted) for line in lines), (fixture, wanted, lines)
