"""The call-list commands (spec/outbound.md L-5, L-6): the agent directory seed and the lists
rebuild, run here so that the ingress, which queues them, never calls a vendor for them.

Each run is one ``reconcile_runs`` row (``agents-seed`` / ``lists-rebuild``) with the
command's id in its totals, ``running`` until it ends ``success`` or ``error`` (the reason in
``error_message``): where an operator reads the outcome of a command answered 202, as for
sweeps and replays. A vendor that is away (``RetryLater``) is retried by the durable; a
refusal that retrying cannot change (``Permanent``: credentials not configured, an unknown
list) ends the command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from uuid import UUID

from sqlalchemy import func, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import AgentsSeedRequested, ListsRebuildRequested
from services.clients.aloware import AlowareClient
from services.clients.budget import RateBudget
from services.clients.ghl import GhlClient
from services.infra.db.models import ReconcileRunRow
from services.infra.errors import Permanent
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.tooling.agents import seed_agents
from services.tooling.call_lists_rebuild import RebuildReport, UnknownList, rebuild_lists

__all__ = ["REBUILD_JOB", "SEED_JOB", "CallListJobs"]

log = get_logger(__name__)
SEED_JOB = "agents-seed"
REBUILD_JOB = "lists-rebuild"
UNCONFIGURED = "GHL and Aloware credentials are not configured"


class CallListJobs:
    """Runs the seed and the rebuild with GHL and Aloware clients.

    ``ghl`` and ``aloware`` are the process's clients when it has them (``dfm run jobs``
    passes both); a client not given is made for one command and closed after it (GHL's on
    the shared rate budget), so a Jobs runner built with none still runs them."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        ghl: GhlClient | None = None,
        aloware: AlowareClient | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self._ghl = ghl
        self._aloware = aloware

    async def seed(self, command: AgentsSeedRequested) -> dict[str, Any]:
        """L-6: match the default agents to the vendors' users; the run's totals."""
        run_id = await self._start(SEED_JOB, command)
        try:
            async with self._clients() as (ghl, aloware):
                ghl_users, aloware_users = await ghl.list_users(), await aloware.list_users()
                inserted = await seed_agents(self.engine, ghl_users, aloware_users)
        except Exception as exc:
            await self._finish(run_id, "error", {**_about(command)}, exc)
            raise
        totals = {
            **_about(command),
            "inserted": inserted,
            "ghlUsers": len(ghl_users),
            "alowareUsers": len(aloware_users),
        }
        await self._finish(run_id, "success", totals)
        log.info("agents_seeded", command_id=str(command.command_id), inserted=inserted)
        return totals

    async def rebuild(self, command: ListsRebuildRequested) -> dict[str, Any]:
        """L-5: re-validate the memberships in scope and reset the Aloware lists; the run's
        totals (``rebuilt``, ``removed``, ``errors`` as the admin API answered them)."""
        about = {**_about(command), "agentKey": command.agent_key, "listKey": command.list_key}
        run_id = await self._start(REBUILD_JOB, command, about)
        try:
            async with self._clients() as (ghl, aloware):
                report = await rebuild_lists(
                    self.settings, self.engine, ghl, aloware, command.agent_key, command.list_key
                )
        except UnknownList as exc:
            await self._finish(run_id, "error", about, exc)
            raise Permanent(str(exc)) from exc
        except Exception as exc:
            await self._finish(run_id, "error", about, exc)
            raise
        totals = {**about, **_report(report)}
        await self._finish(run_id, "success", totals)
        log.info(
            "lists_rebuilt",
            command_id=str(command.command_id),
            rebuilt=report.rebuilt,
            removed=report.removed,
            errors=len(report.errors),
        )
        return totals

    @asynccontextmanager
    async def _clients(self) -> AsyncIterator[tuple[GhlClient, AlowareClient]]:
        s = self.settings
        if not (s.ghl_api_key and s.ghl_location_id and s.aloware_api_token):
            raise Permanent(UNCONFIGURED)
        async with AsyncExitStack() as stack:
            ghl = self._ghl
            if ghl is None:
                budget = RateBudget.for_ghl(self.engine, s)
                ghl = GhlClient.from_settings(s, budget.acquire, budget.observe)
                stack.push_async_callback(ghl.aclose)
            aloware = self._aloware
            if aloware is None:
                aloware = AlowareClient.from_settings(s)
                stack.push_async_callback(aloware.aclose)
            yield ghl, aloware

    async def _start(
        self, job_name: str, command: AgentsSeedRequested | ListsRebuildRequested, about: dict[str, Any] | None = None
    ) -> UUID:
        async with self.engine.begin() as conn:
            run_id: UUID = (
                await conn.execute(
                    insert(ReconcileRunRow)
                    .values(job_name=job_name, status="running", totals=about or _about(command))
                    .returning(ReconcileRunRow.id)
                )
            ).scalar_one()
        return run_id

    async def _finish(self, run_id: UUID, status: str, totals: dict[str, Any], error: Exception | None = None) -> None:
        message = None
        if error is not None:
            message = (
                str(error) if isinstance(error, Permanent | UnknownList) else f"{type(error).__name__}: {error}"
            )[:2000]
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ReconcileRunRow)
                .where(ReconcileRunRow.id == run_id)
                .values(status=status, finished_at=func.now(), totals=totals, error_message=message)
            )


def _about(command: AgentsSeedRequested | ListsRebuildRequested) -> dict[str, Any]:
    return {"commandId": str(command.command_id), "requestedBy": command.requested_by}


def _report(report: RebuildReport) -> dict[str, Any]:
    return {
        "rebuilt": report.rebuilt,
        "removed": report.removed,
        "errors": report.errors,
        "message": f"Rebuilt {report.rebuilt} list(s)",
    }
