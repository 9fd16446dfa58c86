"""Alembic entry points used by ``dfm migrate`` and the test rig.

Migrations run on their own engine (``migrations/env.py``), not on the services' one, so the
statement, lock and idle-in-transaction timeouts of ``db/session.py`` do not apply to them,
on purpose: a schema change on a large table (an index build, 0005's column rewrite to
bigint) may take minutes, and cut off half way it only rolls back and fails the deploy. Its
wait for a table lock stays bounded all the same: every service transaction it could queue
behind is itself bounded by those timeouts.
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str, *, stdout: TextIO | None = None) -> Config:
    """An Alembic config pointing at the bundled ``migrations`` package."""
    location = Path(str(resources.files("migrations")))
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Synchronous: call from a thread inside a loop."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` reverts everything)."""
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str:
    """The current revision(s), as Alembic prints them."""
    out = io.StringIO()
    command.current(alembic_config(database_url, stdout=out))
    return out.getvalue().strip()
