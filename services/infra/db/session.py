"""Async engine and session factory (SQLAlchemy asyncio on asyncpg)."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from services.infra.settings import Settings


def async_url(url: str) -> str:
    """Rewrite any PostgreSQL URL to the asyncpg driver, keeping host/socket and query."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The same URL for plain ``postgresql://`` clients (asyncpg.connect, psql)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def server_timeouts(settings: Settings) -> dict[str, str]:
    """PostgreSQL session settings bounding every statement, lock wait and open transaction.

    Without them one stuck session stalls a whole service: a statement waiting for a row or a
    contact advisory lock its own process holds (security-audit F2) waits for ever while its
    message is kept in progress; a transaction left open pins its locks. With them the
    statement fails, the rule raises, and the delivery is retried like any database error.
    """
    return {
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "lock_timeout": str(settings.db_lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.db_idle_in_transaction_timeout_ms),
    }


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    """One engine per process, sized by ``DB_MAX_CONNECTIONS``, every connection bounded by
    ``server_timeouts`` (sent in the startup packet, so it costs no round trip). Migrations
    use their own engine without them (``db/migrate.py``)."""
    size = pool_size or settings.db_max_connections
    return create_async_engine(
        async_url(settings.database_url_str),
        pool_size=size,
        max_overflow=0,
        pool_timeout=settings.db_connection_timeout,
        pool_recycle=max(settings.db_idle_timeout * 10, 300),
        # No ping before each checkout: it is one more round trip per transaction (≈10 % of a
        # consumer's CPU, bench/RESULTS.md). A connection that died with the server fails its
        # first statement instead; SQLAlchemy then invalidates the whole pool and the delivery
        # is retried like any other database error.
        pool_pre_ping=False,
        connect_args={"timeout": settings.db_connection_timeout, "server_settings": server_timeouts(settings)},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    """Sessions that do not expire objects on commit (we read after commit)."""
    return async_sessionmaker(engine, expire_on_commit=False)
