"""The call-list actions (spec/outbound.md L-5, L-6): seed the agent directory and rebuild
agent call lists.

Both call vendors, so neither runs here: the request is checked (credentials configured; for a
rebuild, keys PostgreSQL can compare and a scope the registry has), queued on the JOBS stream
as ``jobs.agents_seed`` / ``jobs.lists_rebuild`` and answered 202 with the command's id. The
jobs service runs it and records the outcome in ``reconcile_runs`` (job ``agents-seed`` /
``lists-rebuild``, ``totals->>'commandId'``), the way replays and sweeps report.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from contracts.commands import AgentsSeedRequested, ListsRebuildRequested
from contracts.subjects import AGENTS_SEED_SUBJECT, LISTS_REBUILD_SUBJECT
from services.infra.logging import get_logger
from services.ingress.admin.deps import AdminDeps, queue_command
from services.ingress.admin.responses import GUARDED, errors, fail, unconfigured
from services.tooling.call_lists_rebuild import lists_in_scope, unknown_list
from services.tooling.operations import OperationError, no_nul

__all__ = ["call_lists_router"]

log = get_logger(__name__)


def _queued(command_id: str, job: str) -> JSONResponse:
    return JSONResponse({"success": True, "status": "queued", "commandId": command_id, "job": job}, status_code=202)


def call_lists_router(deps: AdminDeps) -> APIRouter:
    """``/api/admin/agents/seed`` and ``/api/admin/lists/rebuild``."""
    engine, admin = deps.engine, deps.admin
    router = APIRouter(responses=GUARDED)

    @router.post(
        "/api/admin/agents/seed",
        dependencies=[admin],
        summary="seed the agent directory (L-6)",
        status_code=202,
        responses=errors(503),
    )
    async def post_agents_seed() -> JSONResponse:
        if not deps.vendors_configured():
            return unconfigured()
        command = AgentsSeedRequested(requested_by="admin-api")
        failed = await queue_command(
            deps.commands, AGENTS_SEED_SUBJECT, command, f"agents-seed:{command.command_id}", "seed"
        )
        if failed is not None:
            return failed
        log.info("admin_agents_seed_queued", command_id=str(command.command_id))
        return _queued(str(command.command_id), "agents-seed")

    @router.post(
        "/api/admin/lists/rebuild",
        dependencies=[admin],
        summary="rebuild agent call lists (L-5)",
        status_code=202,
        responses=errors(404, 422, 503),
    )
    async def post_lists_rebuild(agentKey: str | None = None, listKey: str | None = None) -> JSONResponse:
        if not deps.vendors_configured():
            return unconfigured()
        try:
            no_nul(agentKey=agentKey, listKey=listKey)
        except OperationError as exc:
            return fail(exc)
        async with engine.connect() as conn:
            if not await lists_in_scope(conn, agentKey, listKey):
                return JSONResponse({"success": False, "error": str(unknown_list(agentKey, listKey))}, status_code=404)
        command = ListsRebuildRequested(agent_key=agentKey, list_key=listKey, requested_by="admin-api")
        failed = await queue_command(
            deps.commands, LISTS_REBUILD_SUBJECT, command, f"lists-rebuild:{command.command_id}", "rebuild"
        )
        if failed is not None:
            return failed
        log.info("admin_lists_rebuild_queued", command_id=str(command.command_id), agent_key=agentKey, list_key=listKey)
        return _queued(str(command.command_id), "lists-rebuild")

    return router
