"""The call-list actions (spec/outbound.md L-5, L-6): seed the agent directory and rebuild
agent call lists, with GHL and Aloware clients made for the one request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.clients.aloware import AlowareClient
from services.clients.ghl import GhlClient
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.ingress.admin.deps import AdminDeps
from services.ingress.admin.responses import GUARDED, errors, fail, unconfigured
from services.tooling.agents import seed_agents
from services.tooling.call_lists_rebuild import UnknownList, rebuild_lists
from services.tooling.operations import OperationError, no_nul

__all__ = ["call_lists_router"]

log = get_logger(__name__)


@asynccontextmanager
async def _vendor_clients(settings: Settings) -> AsyncIterator[tuple[GhlClient, AlowareClient]]:
    """GHL and Aloware clients for one admin action, closed after it."""
    ghl, alo = GhlClient.from_settings(settings), AlowareClient.from_settings(settings)
    try:
        yield ghl, alo
    finally:
        await ghl.aclose()
        await alo.aclose()


def call_lists_router(deps: AdminDeps) -> APIRouter:
    """``/api/admin/agents/seed`` and ``/api/admin/lists/rebuild``."""
    settings, engine, admin = deps.settings, deps.engine, deps.admin
    router = APIRouter(responses=GUARDED)

    @router.post(
        "/api/admin/agents/seed",
        dependencies=[admin],
        summary="seed the agent directory (L-6)",
        responses=errors(502, 503),
    )
    async def post_agents_seed() -> JSONResponse:
        if not deps.vendors_configured():
            return unconfigured()
        async with _vendor_clients(settings) as (ghl, alo):
            try:
                inserted = await seed_agents(engine, await ghl.list_users(), await alo.list_users())
            except Exception as exc:  # noqa: BLE001 - a vendor failure is reported, not a 500
                log.warning("agents_seed_failed", error=str(exc))
                return JSONResponse({"success": False, "error": f"seed failed: {exc}"}, status_code=502)
        return JSONResponse({"success": True, "inserted": inserted})

    @router.post(
        "/api/admin/lists/rebuild",
        dependencies=[admin],
        summary="rebuild agent call lists (L-5)",
        responses=errors(404, 422, 502, 503),
    )
    async def post_lists_rebuild(agentKey: str | None = None, listKey: str | None = None) -> JSONResponse:
        if not deps.vendors_configured():
            return unconfigured()
        try:
            no_nul(agentKey=agentKey, listKey=listKey)
        except OperationError as exc:
            return fail(exc)
        async with _vendor_clients(settings) as (ghl, alo):
            try:
                report = await rebuild_lists(settings, engine, ghl, alo, agentKey, listKey)
            except UnknownList as exc:
                return JSONResponse({"success": False, "error": str(exc)}, status_code=404)
            except Exception as exc:  # noqa: BLE001 - a vendor failure is reported, not a 500
                log.warning("lists_rebuild_failed", error=str(exc))
                return JSONResponse({"success": False, "error": f"rebuild failed: {exc}"}, status_code=502)
        log.info("admin_lists_rebuilt", rebuilt=report.rebuilt, removed=report.removed, errors=len(report.errors))
        return JSONResponse(
            {
                "rebuilt": report.rebuilt,
                "removed": report.removed,
                "errors": report.errors,
                "message": f"Rebuilt {report.rebuilt} list(s)",
            }
        )

    return router
