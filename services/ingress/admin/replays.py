"""Replays by subject and range, and the progress of any replay command (``X_DF_ADMIN_SECRET``):
``POST /api/admin/replays`` queues the command on the JOBS stream for the jobs service and
answers its id at once; ``GET /api/admin/replays/{commandId}`` reads the command's
``reconcile_runs`` row, which the jobs service updates every ``PROGRESS_EVERY`` events while it
runs (``services.jobs.replay``). A replay of one event (``POST /api/admin/events/{id}/replay``)
is read there too."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from contracts.commands import ReplayRequested
from contracts.subjects import REPLAY_SUBJECT
from services.infra.logging import get_logger
from services.ingress.admin.deps import AdminDeps, queue_command
from services.ingress.admin.responses import GUARDED, errors
from services.tooling.operations import replay_msg_id, replay_status, replay_status_body

__all__ = ["ReplaysBody", "replays_router"]

log = get_logger(__name__)


class ReplaysBody(BaseModel):
    """What ``dfm replay`` takes: a subject filter with a time or stream-sequence range."""

    subject: str = Field(description="subject filter on the WEBHOOKS stream, e.g. webhooks.aloware.>")
    since: datetime | None = None
    until: datetime | None = None
    fromSeq: int | None = Field(default=None, ge=1)
    toSeq: int | None = Field(default=None, ge=1)
    force: bool = False
    dryRun: bool = False
    requestedBy: str | None = None


def replays_router(deps: AdminDeps) -> APIRouter:
    """``/api/admin/replays`` and ``/api/admin/replays/{commandId}``."""
    engine, admin = deps.engine, deps.admin
    router = APIRouter(responses=GUARDED)

    @router.post(
        "/api/admin/replays",
        dependencies=[admin],
        status_code=202,
        summary="queue a replay by subject and range",
        responses=errors(400, 422, 503),
    )
    async def post_replays(body: ReplaysBody) -> JSONResponse:
        try:
            command = ReplayRequested(
                subject=body.subject,
                since=body.since,
                until=body.until,
                from_seq=body.fromSeq,
                to_seq=body.toSeq,
                force=body.force,
                dry_run=body.dryRun,
                requested_by=body.requestedBy or "admin-api",
            )
        except ValidationError as exc:
            # a body of the right types that no replay can take (e.g. toSeq < fromSeq): invalid
            # parameters, answered like the other admin routes' (ErrorBody under 422)
            return JSONResponse({"success": False, "error": str(exc.errors()[0]["msg"])}, status_code=422)
        failed = await queue_command(deps.commands, REPLAY_SUBJECT, command, replay_msg_id(command), "replay")
        if failed is not None:
            return failed
        command_id = str(command.command_id)
        log.info("admin_replays_queued", command_id=command_id, subject=body.subject, force=body.force)
        return JSONResponse(
            {
                "success": True,
                "status": "queued",
                "commandId": command_id,
                "statusUrl": f"/api/admin/replays/{command_id}",
            },
            status_code=202,
        )

    @router.get(
        "/api/admin/replays/{commandId}",
        dependencies=[admin],
        summary="the progress of a replay command",
        responses=errors(404),
    )
    async def get_replay(commandId: str) -> JSONResponse:
        try:
            command_id = uuid.UUID(commandId)
        except ValueError:
            # a malformed id names no command: 404, as a malformed event id does (parse_event_id)
            return JSONResponse({"success": False, "error": f"not a command id: {commandId!r}"}, status_code=404)
        found = await replay_status(engine, command_id)
        if found is None:
            return JSONResponse(
                {"success": False, "error": "no replay with this id has started (queued, or unknown)"},
                status_code=404,
            )
        return JSONResponse(replay_status_body(str(command_id), found))

    return router
