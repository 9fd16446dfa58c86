"""Helpers shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.infra.db.session import sync_url
from tests.conftest import create_database, drop_database

VERITY_DB = Path(__file__).parents[1] / "fixtures" / "verity_db"


@pytest.fixture
async def verity_db(pg_root_url: str) -> AsyncIterator[str]:
    url = await create_database(pg_root_url)
    conn = await asyncpg.connect(sync_url(url))
    try:
        await conn.execute((VERITY_DB / "schema.sql").read_text())
        await conn.execute((VERITY_DB / "broadcast_seed.sql").read_text())
    finally:
        await conn.close()
    yield url
    await drop_database(pg_root_url, url)


__all__ = ["verity_db"]
