"""Sandbox knobs shared by every fake: the request log, injected faults and reset."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.sandbox.state import Fault, SandboxDep

__all__ = ["router"]

router = APIRouter()


@router.get("/_sandbox/calls")
async def calls(sandbox: SandboxDep, vendor: str | None = None) -> JSONResponse:
    return JSONResponse(sandbox.log.calls(vendor))


@router.get("/_sandbox/webhooks")
async def webhooks(sandbox: SandboxDep) -> JSONResponse:
    """The webhooks the fakes sent: how many POSTs are in flight, and each answered one
    (path, status, the event id the ingress answered with; ``null`` status: not delivered)."""
    return JSONResponse(sandbox.webhooks.report())


@router.post("/_sandbox/faults")
async def faults(request: Request, sandbox: SandboxDep) -> JSONResponse:
    spec = await request.json()
    sandbox.faults.add(Fault(**spec))
    return JSONResponse({"ok": True})


@router.delete("/_sandbox/faults")
async def clear_faults(sandbox: SandboxDep) -> JSONResponse:
    """The vendor recovers: every injected fault is dropped, state is kept."""
    sandbox.faults.clear()
    return JSONResponse({"ok": True})


@router.post("/_sandbox/reset")
async def reset(sandbox: SandboxDep) -> JSONResponse:
    sandbox.reset()
    return JSONResponse({"ok": True})
