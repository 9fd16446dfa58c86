"""Which database errors are about the values, not about the database (STYLE.md §4).

SQLAlchemy's asyncpg adapter raises a generic ``DBAPIError`` whose ``orig.__cause__`` is the
driver's typed exception; the chain is followed so a decision rests on the SQLSTATE class
(the exception type), never on the message text.
"""

from __future__ import annotations

import asyncpg

__all__ = ["UNSTORABLE_VALUE", "driver_error", "sqlstate"]

# PostgreSQL refusing a value whatever we retry: class 22 (data exception: NUL in text,
# untranslatable character, invalid text representation, numeric out of range) and class 54
# (program limit exceeded: an index row over the btree limit). Class 23 (constraints) is not
# here: a unique violation between two replicas is a race a retry resolves.
UNSTORABLE_VALUE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
)


def driver_error(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The driver exception of one of ``types`` behind ``exc``, else None."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, types):
            return seen
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a driver exception ("?" when it has none)."""
    return str(getattr(exc, "sqlstate", None) or "?")
