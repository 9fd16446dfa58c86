"""The call-list commands on the JOBS stream (spec/outbound.md L-5, L-6; issue #17 item 1):
the jobs service runs the agent seed and the lists rebuild, makes their vendor calls, and
records each run in ``reconcile_runs`` where an operator reads it; commands are settled by
their error family (STYLE.md §4)."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.commands import AgentsSeedRequested, ListsRebuildRequested
from contracts.streams import JOBS_CONSUMER
from contracts.subjects import AGENTS_SEED_SUBJECT, LISTS_REBUILD_SUBJECT, subject_matches
from services.infra.settings import Settings
from services.jobs.commands import COMMANDS
from services.jobs.service import Jobs
from tests.conftest import TEST_SECRETS
from tests.support.ingress_rig import stream_messages
from tests.support.jobs_rig import fetch, running_jobs
from tests.support.sync_rig import Pipeline, consumers, eventually, pipeline_settings, running_pipeline

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}


def test_every_command_subject_is_on_the_jobs_durable_and_has_one_model() -> None:
    for subject in COMMANDS:
        assert any(subject_matches(f, subject) for f in JOBS_CONSUMER.filter_subjects), subject
    assert len(set(COMMANDS.values())) == len(COMMANDS)
    assert COMMANDS[AGENTS_SEED_SUBJECT] is AgentsSeedRequested
    assert COMMANDS[LISTS_REBUILD_SUBJECT] is ListsRebuildRequested


async def test_every_command_model_has_a_runner(base_env: dict[str, str], tmp_path: Path) -> None:
    async with running_jobs(pipeline_settings(base_env, tmp_path), consume=False) as jobs:
        assert set(jobs.runners) == set(COMMANDS.values())


async def publish(jobs: Jobs, subject: str, command: BaseModel) -> None:
    await jobs.js.publish(
        subject, command.model_dump_json().encode(), headers={"Nats-Msg-Id": f"test:{command.command_id}"}
    )  # type: ignore[attr-defined]


async def runs(db: str, job: str, command: BaseModel) -> list[dict[str, Any]]:
    found = await fetch(
        db,
        "SELECT status, totals, error_message FROM reconcile_runs WHERE job_name = $1 "
        "AND totals->>'commandId' = $2 ORDER BY started_at",
        job,
        str(command.command_id),
    )  # type: ignore[attr-defined]
    return [{**r, "totals": json.loads(r["totals"]) if isinstance(r["totals"], str) else r["totals"]} for r in found]


async def finished(db: str, job: str, command: BaseModel, status: str = "success") -> list[dict[str, Any]]:
    found = await runs(db, job, command)
    return found if found and found[-1]["status"] == status else []


def vendor_calls(calls: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["vendor"], c["method"], c["path"]) for c in calls]


async def test_the_agents_seed_command_reads_the_vendors_users_in_jobs_and_records_its_run(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        before = len(await p.calls())
        command = AgentsSeedRequested(requested_by="test")
        await publish(jobs, AGENTS_SEED_SUBJECT, command)
        [run] = await eventually(lambda: finished(clean_db, "agents-seed", command))
        assert run["totals"]["inserted"] == 3 and run["totals"]["requestedBy"] == "test"
        made = vendor_calls((await p.calls())[before:])
        assert ("ghl", "GET", "/users/") in made and ("aloware", "GET", "/webhook/users") in made
        agents = await fetch(clean_db, "SELECT agent_key, ghl_owner_id FROM agent_directory ORDER BY agent_key")
        assert [(a["agent_key"], a["ghl_owner_id"]) for a in agents] == [
            ("CHRIS", "sbxUserChris"),
            ("RAFI", "sbxUserRafi"),
            ("UNASSIGNED", None),
        ]


async def test_a_vendor_asking_to_wait_retries_the_command_after_its_delay(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """RetryLater(1 s) is a NAK with that delay: the second delivery runs within the test's
    wait, not after the durable's 30 s back-off."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        await p.sandbox.post(
            "/_sandbox/faults",
            json={"vendor": "ghl", "count": 1, "status": 429, "retry_after": 1, "path_contains": "users"},
        )
        command = AgentsSeedRequested(requested_by="test")
        await publish(jobs, AGENTS_SEED_SUBJECT, command)
        first, second = await eventually(lambda: finished(clean_db, "agents-seed", command))
        assert first["status"] == "error" and "429" in first["error_message"]
        assert second["totals"]["inserted"] == 3


async def setup_call_now(p: Pipeline, jobs: Jobs, db: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The directory seeded (by command), then ``call_now_lists``."""
    seed = AgentsSeedRequested()
    await publish(jobs, AGENTS_SEED_SUBJECT, seed)
    await eventually(lambda: finished(db, "agents-seed", seed))
    return await call_now_lists(p, db)


async def call_now_lists(p: Pipeline, db: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """CHRIS's lists made in Aloware and two of Chris's contacts tagged call_now on
    DF_CHRIS_CALL_NOW (aloware-sync puts them there)."""
    for name in ("DF_CHRIS_CALL_NOW", "DF_CHRIS_NEW_LEADS"):
        await p.sandbox.post("/_sandbox/aloware/lists", json={"name": name})
    contacts = []
    for name, phone in (("Keep", "+15555550411"), ("Drop", "+15555550412")):
        answer = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL,
            json={
                "locationId": p.settings.ghl_location_id,
                "firstName": name,
                "phone": phone,
                "assignedTo": "sbxUserChris",
                "tags": ["call_now"],
            },
        )
        assert answer.status_code == 201, answer.text
        contacts.append(answer.json()["contact"])

    async def both_on_the_list() -> bool:
        rows = await fetch(
            db, "SELECT count(*) AS n FROM contact_list_memberships WHERE list_key = 'CALL_NOW' AND status = 'active'"
        )
        return bool(rows[0]["n"] == 2)

    await eventually(both_on_the_list)
    return contacts[0], contacts[1]


async def test_the_lists_rebuild_command_revalidates_and_resets_the_list_in_jobs(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with running_pipeline(settings) as p, running_jobs(settings) as jobs:
        keep, drop = await setup_call_now(p, jobs, clean_db)
        await p.sandbox.patch(f"/_sandbox/ghl/contacts/{drop['id']}", json={"tags": []})  # drift
        before = len(await p.calls())
        command = ListsRebuildRequested(agent_key="CHRIS", list_key="CALL_NOW", requested_by="test")
        await publish(jobs, LISTS_REBUILD_SUBJECT, command)
        [run] = await eventually(lambda: finished(clean_db, "lists-rebuild", command))
        totals = run["totals"]
        assert (totals["rebuilt"], totals["removed"], totals["errors"]) == (1, 1, [])
        assert (totals["agentKey"], totals["listKey"]) == ("CHRIS", "CALL_NOW")
        made = vendor_calls((await p.calls())[before:])
        assert ("aloware", "POST", "/webhook/powerdialer-clear-list") in made
        assert ("ghl", "GET", f"/contacts/{drop['id']}") in made
        lists = {item["name"]: item["contact_ids"] for item in (await p.sandbox.get("/_sandbox/aloware/lists")).json()}
        kept = next(c["id"] for c in await p.aloware_contacts() if c["phone_number"] == "+15555550411")
        assert lists["DF_CHRIS_CALL_NOW"] == [kept]
        state = await fetch(
            clean_db, "SELECT contact_id, status FROM contact_list_memberships WHERE list_key = 'CALL_NOW'"
        )
        assert {(r["contact_id"], r["status"]) for r in state} == {(keep["id"], "active"), (drop["id"], "removed")}


async def test_a_rebuild_of_an_unknown_list_is_refused_once_and_terminated(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Permanent: the run ends ``error`` with the reason and the message is terminated (a
    ``dead_letters`` row from JetStream's advisory), not redelivered."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings), running_jobs(settings) as jobs:
        command = ListsRebuildRequested(agent_key="NOBODY", list_key="HOT")
        await publish(jobs, LISTS_REBUILD_SUBJECT, command)
        [run] = await eventually(lambda: finished(clean_db, "lists-rebuild", command, "error"))
        assert run["error_message"] == "List NOBODY/HOT not found in registry"

        async def dead_letter() -> list[dict[str, Any]]:
            return await fetch(clean_db, "SELECT kind, subject, reason FROM dead_letters WHERE consumer = 'jobs'")

        [dead] = await eventually(dead_letter)
        assert (dead["kind"], dead["subject"], dead["reason"]) == (
            "terminated",
            LISTS_REBUILD_SUBJECT,
            "terminated by jobs",
        )
        assert len(await runs(clean_db, "lists-rebuild", command)) == 1


async def test_without_vendor_credentials_the_seed_is_refused_with_the_reason(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path).model_copy(update={"aloware_api_token": None})
    async with running_jobs(settings) as jobs:
        command = AgentsSeedRequested()
        await publish(jobs, AGENTS_SEED_SUBJECT, command)
        [run] = await eventually(lambda: finished(clean_db, "agents-seed", command, "error"))
        assert run["error_message"] == "GHL and Aloware credentials are not configured"


# --- the admin endpoints queue the commands; only jobs calls the vendors ------------------------
ADMIN = {"X-DF-ADMIN-SECRET": TEST_SECRETS["DF_ADMIN_SECRET"].split(",")[0]}


async def queued(p: Pipeline, answer: Any, subject: str, job: str) -> str:
    """The 202's command id, after checking that command is waiting on the JOBS stream."""
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["success"], body["status"], body["job"]) == (True, "queued", job)
    on_stream = [json.loads(m.data) for m in await stream_messages(p.settings.nats_url, subject)]
    assert [c["command_id"] for c in on_stream] == [body["commandId"]]
    return str(body["commandId"])


async def run_of(db: str, job: str, command_id: str) -> list[dict[str, Any]]:
    return await finished(db, job, AgentsSeedRequested(command_id=command_id))


def without_running_consumers(settings: Settings) -> AbstractAsyncContextManager[Pipeline]:
    """Sandbox vendors, recorder and ingress, but no sync consumer: a vendor request the
    sandbox records now was made by the ingress (or by a jobs runner the test starts)."""
    return running_pipeline(settings, replicas=0)


async def test_the_ingress_queues_the_seed_and_the_rebuild_and_never_calls_a_vendor_for_them(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """With no jobs service and no sync consumer running, each endpoint answers 202 and the
    sandbox vendors see no request at all; the jobs service, started afterwards, makes the
    calls and records the run."""
    settings = pipeline_settings(base_env, tmp_path, ENABLE_POWER_DIALER_LISTS="true")
    async with without_running_consumers(settings) as p:
        calls = await p.calls()
        seed_id = await queued(
            p, await p.ingress.post("/api/admin/agents/seed", headers=ADMIN), AGENTS_SEED_SUBJECT, "agents-seed"
        )
        assert await p.calls() == calls  # the ingress called no vendor
        assert await runs(clean_db, "agents-seed", AgentsSeedRequested(command_id=seed_id)) == []
        async with running_jobs(settings):
            [run] = await eventually(lambda: run_of(clean_db, "agents-seed", seed_id))
        assert run["totals"]["inserted"] == 3 and run["totals"]["requestedBy"] == "admin-api"
        made = vendor_calls((await p.calls())[len(calls) :])
        assert ("ghl", "GET", "/users/") in made and ("aloware", "GET", "/webhook/users") in made

        async with consumers(settings, 1):  # aloware-sync makes the lists and memberships, then stops
            _, drop = await call_now_lists(p, clean_db)
        await p.sandbox.patch(f"/_sandbox/ghl/contacts/{drop['id']}", json={"tags": []})
        calls = await p.calls()
        rebuild_id = await queued(
            p,
            await p.ingress.post(
                "/api/admin/lists/rebuild", headers=ADMIN, params={"agentKey": "CHRIS", "listKey": "CALL_NOW"}
            ),
            LISTS_REBUILD_SUBJECT,
            "lists-rebuild",
        )
        assert await p.calls() == calls
        async with running_jobs(settings):
            [run] = await eventually(lambda: run_of(clean_db, "lists-rebuild", rebuild_id))
        assert (run["totals"]["rebuilt"], run["totals"]["removed"], run["totals"]["errors"]) == (1, 1, [])
        made = vendor_calls((await p.calls())[len(calls) :])
        assert ("aloware", "POST", "/webhook/powerdialer-clear-list") in made

        # refused before anything is queued: an unknown scope (404) and a NUL key (422)
        missing = await p.ingress.post(
            "/api/admin/lists/rebuild", headers=ADMIN, params={"agentKey": "NOBODY", "listKey": "HOT"}
        )
        assert missing.status_code == 404 and missing.json()["error"] == "List NOBODY/HOT not found in registry"
        nul = await p.ingress.post("/api/admin/lists/rebuild", headers=ADMIN, params={"agentKey": "CH\x00RIS"})
        assert nul.status_code == 422
        assert len(await stream_messages(p.settings.nats_url, LISTS_REBUILD_SUBJECT)) == 1
