"""The fake GHL: the API under ``/ghl`` and its sandbox knobs, as one router."""

from __future__ import annotations

from fastapi import APIRouter

from services.sandbox.ghl import admin, gate, oauth

__all__ = ["router"]

router = APIRouter()
router.include_router(admin.router)
router.include_router(oauth.router)  # before the gate's catch-all ``/ghl/{path}``
router.include_router(gate.router)
