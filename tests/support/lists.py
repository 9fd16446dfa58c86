"""Helpers shared by several test modules."""

from __future__ import annotations

import json
from typing import Any

from tests.support.admin import ADMIN
from tests.support.jobs_rig import fetch, running_jobs
from tests.support.sync_rig import Pipeline, eventually

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}


async def job_run(p: Pipeline, answer: Any, job: str) -> dict[str, Any]:
    """The finished run of the command a 202 queued: the jobs service runs it (and makes its
    vendor calls) and records it in reconcile_runs."""
    assert answer.status_code == 202, answer.text
    command_id = answer.json()["commandId"]

    async def finished() -> list[dict[str, Any]]:
        return await fetch(
            p.settings.database_url,
            "SELECT status, totals, error_message FROM reconcile_runs "
            "WHERE job_name = $1 AND totals->>'commandId' = $2 AND status <> 'running'",
            job,
            command_id,
        )

    async with running_jobs(p.settings):
        [run] = await eventually(finished)
    totals = json.loads(run["totals"]) if isinstance(run["totals"], str) else run["totals"]
    return {**run, "totals": totals}


async def setup_lists(p: Pipeline, *names: str) -> dict[str, str]:
    seeded = await job_run(p, await p.ingress.post("/api/admin/agents/seed", headers=ADMIN), "agents-seed")
    assert seeded["status"] == "success" and seeded["totals"]["inserted"] == 3, seeded
    return {n: (await p.sandbox.post("/_sandbox/aloware/lists", json={"name": n})).json()["id"] for n in names}


async def members(p: Pipeline) -> dict[str, list[str]]:
    return {
        item["name"].upper(): item["contact_ids"] for item in (await p.sandbox.get("/_sandbox/aloware/lists")).json()
    }


async def memberships(db: str) -> dict[tuple[str, str], str]:
    rows = await fetch(db, "SELECT agent_key, list_key, status FROM contact_list_memberships")
    return {(r["agent_key"], r["list_key"]): r["status"] for r in rows}


async def create_contact(p: Pipeline, **fields: Any) -> dict[str, Any]:
    answer = await p.sandbox.post(
        "/ghl/contacts/", headers=GHL, json={"locationId": p.settings.ghl_location_id, **fields}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["contact"]


__all__ = ["create_contact", "job_run", "members", "memberships", "setup_lists"]
