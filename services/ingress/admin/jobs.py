"""The jobs API (``X_DF_JOBS_SECRET``; spec/inbound.md §4.6): sweeps queued on the JOBS stream
for the jobs service and answered at once."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from contracts.commands import SweepRequested
from contracts.subjects import SWEEP_SUBJECT
from services.infra.db.models import EVENT_TABLES, TableName
from services.infra.logging import get_logger
from services.ingress.admin.deps import AdminDeps, queue_command
from services.ingress.admin.responses import GUARDED, errors

__all__ = ["jobs_router"]

log = get_logger(__name__)


def jobs_router(deps: AdminDeps) -> APIRouter:
    """``/api/jobs/process-pending`` (GET and POST), ``/api/jobs/enqueue-pending`` and
    ``/api/jobs/enqueue-texting-pending``."""
    settings, engine, jobs = deps.settings, deps.engine, deps.jobs
    router = APIRouter(responses=GUARDED)

    async def queue_sweep(command: SweepRequested) -> JSONResponse | None:
        return await queue_command(deps.commands, SWEEP_SUBJECT, command, f"sweep:manual:{command.command_id}", "sweep")

    async def process_pending() -> JSONResponse:
        command = SweepRequested(requested_by="jobs-api")
        failed = await queue_sweep(command)
        if failed is not None:
            return failed
        log.info("sweep_queued", sweep_id=str(command.command_id))
        return JSONResponse({"success": True, "status": "queued", "sweepId": str(command.command_id)}, status_code=202)

    for method in ("POST", "GET"):  # GET kept for the original's cron
        router.add_api_route(
            "/api/jobs/process-pending",
            process_pending,
            methods=[method],
            dependencies=[jobs],
            summary="run the pending sweep now",
            status_code=202,
            responses=errors(503),
            operation_id=f"process_pending_{method.lower()}",
        )

    async def enqueue(table: TableName) -> JSONResponse:
        model = EVENT_TABLES[table]
        async with engine.connect() as conn:
            total = int(
                await conn.scalar(select(func.count()).select_from(model).where(model.status == "pending")) or 0
            )
        command = SweepRequested(requested_by="jobs-api", ignore_min_age=True, tables=(table,), steps=("S1",))
        failed = await queue_sweep(command)
        if failed is not None:
            return failed
        return JSONResponse(
            {
                "enqueued": min(total, settings.jobs_batch_size),
                "totalPending": total,
                "sweepId": str(command.command_id),
            }
        )

    @router.post(
        "/api/jobs/enqueue-pending",
        dependencies=[jobs],
        summary="re-drive pending webhook events now",
        responses=errors(503),
    )
    async def enqueue_pending() -> JSONResponse:
        return await enqueue("webhook")

    @router.post(
        "/api/jobs/enqueue-texting-pending",
        dependencies=[jobs],
        summary="re-drive pending texting events now",
        responses=errors(503),
    )
    async def enqueue_texting_pending() -> JSONResponse:
        return await enqueue("texting")

    return router
