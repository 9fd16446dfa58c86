"""The webhooks the fakes send after a write, POSTed to the ingress in the background, as the
real vendor would (``DFM_SANDBOX_WEBHOOK_URL``); each vendor module signs its own.

Each answered POST is kept (path, status, the event id the ingress gave), and the POSTs
still in flight are counted, so a test can wait for the webhooks a write caused instead of
guessing how long they take (``GET /_sandbox/webhooks``)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.infra.logging import get_logger

__all__ = ["WebhookEmitter"]

log = get_logger(__name__)


class WebhookEmitter:
    """Fire-and-forget POSTs to ``url``; :meth:`stop` waits for the ones in flight."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._delivered: list[dict[str, Any]] = []

    def report(self) -> dict[str, Any]:
        """The POSTs in flight and every answered one, oldest first."""
        return {"in_flight": len(self._pending), "delivered": list(self._delivered)}

    def forget(self) -> None:
        self._delivered.clear()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=10)

    async def stop(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def emit(self, path: str, headers: dict[str, str], body: bytes) -> None:
        """POST ``body`` to ``url + path`` in the background (no-op without a URL or before start)."""
        if not self.url or self._client is None:
            return
        task = asyncio.create_task(self._post(self._client, self.url.rstrip("/") + path, headers, body))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes) -> None:
        try:
            answer = await client.post(url, content=body, headers={"content-type": "application/json", **headers})
        except httpx.HTTPError as exc:
            log.warning("sandbox_webhook_failed", error=type(exc).__name__)
            self._delivered.append({"path": httpx.URL(url).path, "status": None, "event_id": None})
            return
        try:
            parsed = answer.json()
        except ValueError:
            parsed = None
        event_id = parsed.get("id") if isinstance(parsed, dict) else None
        self._delivered.append({"path": httpx.URL(url).path, "status": answer.status_code, "event_id": event_id})
