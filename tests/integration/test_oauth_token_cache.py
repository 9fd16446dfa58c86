"""OA-2 without a database read per GHL call (issue #18, CPU per event): the location's access
token is kept in the process with its expiry, read again at most once a minute (so a reinstall
or a `needs_reinstall` set by another replica is seen), and replaced when GHL rejects it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import event, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clients.ghl_oauth import GhlOAuth, TokenCipher, new_key
from services.infra.db.models import GhlOauthTokenRow
from services.infra.db.session import create_engine
from services.infra.errors import Permanent
from services.infra.settings import Settings

LOCATION = "ghlLocationDemo00001"


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    made = create_engine(settings)
    yield made
    await made.dispose()


def token_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dfm_token_key": [SecretStr(new_key())]})


async def store(engine: AsyncEngine, cipher: TokenCipher, token: str, expires_in: timedelta) -> None:
    async with engine.begin() as conn:
        await conn.execute(GhlOauthTokenRow.__table__.delete())
        await conn.execute(
            insert(GhlOauthTokenRow).values(
                location_id=LOCATION,
                access_token=cipher.encrypt(token),
                refresh_token=cipher.encrypt("refresh-1"),
                expires_at=datetime.now(UTC) + expires_in,
            )
        )


def count_token_reads(engine: AsyncEngine) -> list[str]:
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "ghl_oauth_tokens" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return seen


async def test_the_token_is_read_once_and_then_served_from_memory(settings: Settings, engine: AsyncEngine) -> None:
    settings = token_settings(settings)
    oauth = GhlOAuth(settings, engine)
    await store(engine, oauth.cipher, "token-1", timedelta(hours=20))
    reads = count_token_reads(engine)
    assert [await oauth.access_token(LOCATION) for _ in range(50)] == ["token-1"] * 50
    assert len(reads) == 1, reads
    await oauth.aclose()


async def test_a_cached_token_is_read_again_after_a_minute(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = token_settings(settings)
    oauth = GhlOAuth(settings, engine)
    await store(engine, oauth.cipher, "token-1", timedelta(hours=20))
    assert await oauth.access_token(LOCATION) == "token-1"
    async with engine.begin() as conn:  # another replica's refresh, or a reinstall
        await conn.execute(update(GhlOauthTokenRow).values(access_token=oauth.cipher.encrypt("token-2")))
    assert await oauth.access_token(LOCATION) == "token-1"  # within the minute: memory
    clock = oauth.clock() + 61
    monkeypatch.setattr(oauth, "clock", lambda: clock)
    assert await oauth.access_token(LOCATION) == "token-2"
    async with engine.begin() as conn:
        await conn.execute(update(GhlOauthTokenRow).values(needs_reinstall=True, last_refresh_error="invalid_grant"))
    clock += 61
    with pytest.raises(Permanent, match="needs a reinstall"):
        await oauth.access_token(LOCATION)
    await oauth.aclose()


async def test_a_token_near_its_expiry_is_not_served_from_memory(settings: Settings, engine: AsyncEngine) -> None:
    """Within the refresh margin the token goes through OA-3 (here: refused, no client secret
    configured), however recently it was cached."""
    settings = token_settings(settings).model_copy(update={"ghl_client_secret": None})
    oauth = GhlOAuth(settings, engine)
    await store(engine, oauth.cipher, "token-1", timedelta(minutes=4))
    with pytest.raises(Permanent, match="GHL_CLIENT_ID"):
        await oauth.access_token(LOCATION)
    await oauth.aclose()


async def test_a_rejected_token_is_replaced_by_the_one_another_replica_stored(
    settings: Settings, engine: AsyncEngine
) -> None:
    settings = token_settings(settings)
    oauth = GhlOAuth(settings, engine)
    await store(engine, oauth.cipher, "token-1", timedelta(hours=20))
    assert await oauth.access_token(LOCATION) == "token-1"
    async with engine.begin() as conn:
        await conn.execute(update(GhlOauthTokenRow).values(access_token=oauth.cipher.encrypt("token-2")))
    assert await oauth.refresh(LOCATION, rejected="token-1") == "token-2"  # OA-5: GHL said 401
    reads = count_token_reads(engine)
    assert await oauth.access_token(LOCATION) == "token-2"
    assert reads == []  # the refreshed token is the cached one
    await oauth.aclose()
