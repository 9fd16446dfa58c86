"""Verity's database (spec/outbound.md §2.4 V4): one small asyncpg pool per process, opened
on first use (max 5 connections, idle 20 s, connect timeout 10 s)."""

from __future__ import annotations

import asyncpg

from services.infra.db.session import sync_url
from services.infra.settings import Settings


class VerityDatabase:
    """Lazily opened pool on ``VERITY_DATABASE_URL``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None

    @property
    def configured(self) -> bool:
        return bool(self.settings.verity_database_url)

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            assert self.settings.verity_database_url is not None
            self._pool = await asyncpg.create_pool(
                sync_url(self.settings.verity_database_url),
                min_size=0,
                max_size=5,
                max_inactive_connection_lifetime=20,
                timeout=10,
            )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
