"""The dry-run plans of every sync service, composed here because only the entry-point layer
may import the service packages (import-linter's independence contract): ``dfm replay
--dry-run`` uses it directly, and ``dfm run jobs`` hands it to the jobs service, so a dry run
queued through the admin API, the console or the MCP server shows the same plans."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.streams import expected_consumers
from services.infra.settings import Settings

Explainer = Callable[[WebhookEvent], Awaitable[list[str]]]
ServiceExplain = Callable[[Settings, AsyncEngine, WebhookEvent], Awaitable[list[str]]]


def _by_consumer() -> dict[str, ServiceExplain]:
    from services.aloware_sync.explain import explain as aloware
    from services.ghl_sync.explain import explain as ghl
    from services.verity_sync.explain import explain as verity

    return {"ghl-sync": ghl, "aloware-sync": aloware, "verity-sync": verity}


def explainer(settings: Settings, engine: AsyncEngine) -> Explainer:
    """What each consumer that takes ``event`` would do: its rules' plans, one line per
    operation, from PostgreSQL's known state (no vendor is asked, nothing is written)."""
    services = _by_consumer()

    async def explain(event: WebhookEvent) -> list[str]:
        lines: list[str] = []
        for consumer in expected_consumers(event.subject):
            service = services.get(consumer)
            if service is None:  # the recorder: it only records the event's row
                lines.append(f"{consumer}: records the event")
                continue
            plan = await service(settings, engine, event) or [f"{consumer}: nothing to do"]
            lines += [line if line.startswith(consumer) else f"{consumer} {line}" for line in plan]
        return lines

    return explain
