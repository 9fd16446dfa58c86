"""Operator endpoints on the ingress (ARCHITECTURE.md §5; spec/inbound.md §4.5, §4.6): one
router per area, built with the collaborators of ``deps.AdminDeps``.

- ``events``: list and show events, the failed outbox rows, mark done, quarantine, replay;
- ``replays``: a replay by subject and range, and the progress of any replay command;
- ``call_lists``: the agent directory seed and the lists rebuild (L-5, L-6);
- ``jobs``: the sweeps of the jobs API.

``deps`` holds the two guarded secrets (admin, jobs) as FastAPI security dependencies and the
command publisher; ``responses`` the error bodies and their OpenAPI description. State changes
are done through ``services.tooling.operations``; work that takes time (replays, sweeps) is
queued on the JOBS stream for the jobs service and answered at once.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.settings import Settings
from services.ingress.admin.call_lists import call_lists_router
from services.ingress.admin.deps import (
    AdminDeps,
    CommandPublisher,
    Throttled,
    Unauthorized,
    admin_guard,
    throttled_response,
    unauthorized_response,
)
from services.ingress.admin.events import events_router
from services.ingress.admin.jobs import jobs_router
from services.ingress.admin.replays import replays_router
from services.ingress.admin.responses import GUARDED
from services.ingress.limits import SlidingWindow

__all__ = [
    "GUARDED",
    "CommandPublisher",
    "Throttled",
    "Unauthorized",
    "admin_guard",
    "admin_router",
    "throttled_response",
    "unauthorized_response",
]


def admin_router(
    settings: Settings, engine: AsyncEngine, commands: CommandPublisher, failures: SlidingWindow | None = None
) -> APIRouter:
    """The admin and jobs routes, bound to one engine and one command publisher; failed
    attempts of both secrets count in ``failures`` (per address, ``ADMIN_RATE_LIMIT_MAX``)."""
    deps = AdminDeps.build(settings, engine, commands, failures or SlidingWindow(settings.admin_rate_limit_max))
    router = APIRouter()
    for area in (events_router, replays_router, call_lists_router, jobs_router):  # the order of the OpenAPI paths
        router.include_router(area(deps))
    return router
