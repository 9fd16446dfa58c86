"""Helpers shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from services.infra import nats_auth
from services.tooling.embedded import EmbeddedNats
from tests.support.sync_rig import eventually

OUTBOUND_SMS = "webhooks.ghl.provider_message.provider_outbound_sms"  # verity-sync texts from these


@dataclass
class As:
    """A connection as one identity, collecting the server's permission errors."""

    nc: NatsClient
    violations: list[str] = field(default_factory=list)

    @property
    def js(self) -> Any:
        return self.nc.jetstream(timeout=0.5)  # a refusal is never answered: wait only briefly

    async def refused(self, subject: str) -> bool:
        """A JetStream publish to ``subject`` got no PubAck and the server named the subject."""
        try:
            await self.js.publish(subject, b"{}")
        except (TimeoutError, nats.errors.TimeoutError):
            await eventually(lambda: self._named(subject), timeout=5)
            return True
        return False

    async def api_refused(self, call: Any, subject: str) -> bool:
        """A JetStream API call got no answer and the server named its subject."""
        try:
            await call
        except (TimeoutError, nats.errors.TimeoutError):
            await eventually(lambda: self._named(subject), timeout=5)
            return True
        return False

    async def _named(self, subject: str) -> bool:
        return any(subject.lower() in v.lower() for v in self.violations)


@asynccontextmanager
async def as_identity(server: EmbeddedNats, identity: str, seed: Path | None = None) -> AsyncIterator[As]:
    who = As(nc=None)  # type: ignore[arg-type]

    async def on_error(exc: Exception) -> None:
        who.violations.append(str(exc))

    assert server.credentials_dir is not None
    who.nc = await nats.connect(
        server.plain_url,
        nkeys_seed=str(seed or nats_auth.seed_path(server.credentials_dir, identity)),
        inbox_prefix=nats_auth.inbox_prefix(identity),
        error_cb=on_error,
        max_reconnect_attempts=0,
        connect_timeout=2,
    )
    try:
        yield who
    finally:
        await who.nc.close()


__all__ = ["OUTBOUND_SMS", "as_identity"]
