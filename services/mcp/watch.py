"""``notifications/tools/list_changed`` when the Verity catalog file changes.

The catalog is a file a deploy (or an editor) rewrites; the tool list is generated from it.
The watch looks at the file's identity (inode, size, mtime) every poll and, only when that
moved, regenerates the list and compares it with the list clients were last given: a touched
file, or a new endpoint the allow-list leaves out, changes nothing a client sees, so nothing is
announced. The announcement itself (which clients, over which channel) is the caller's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import mcp.types as types

from services.infra.logging import get_logger

__all__ = ["CATALOG_POLL_S", "CatalogWatch"]

log = get_logger(__name__)
CATALOG_POLL_S = 1.0  # a stat() a second; a catalog changes with a deploy, not by the second

FileKey = tuple[int, int, int] | None


def _file_key(path: Path) -> FileKey:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _listing(tools: list[types.Tool]) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


class CatalogWatch:
    """Announces a changed tool list once per change of the catalog file."""

    def __init__(
        self, path: Path, tools: Callable[[], list[types.Tool]], announce: Callable[[], Awaitable[None]]
    ) -> None:
        self._path = path
        self._tools = tools
        self._announce = announce
        self._key = _file_key(path)
        self._served = _listing(tools())

    def served(self, tools: list[types.Tool]) -> None:
        """A client was given this list (``tools/list``): it needs no announcement of it."""
        self._served = _listing(tools)

    async def check(self) -> bool:
        """One look at the file; True when a changed tool list was announced."""
        key = _file_key(self._path)
        if key == self._key:
            return False
        self._key = key
        listing = _listing(self._tools())
        if listing == self._served:
            return False
        self._served = listing
        log.info("mcp_tool_list_changed", catalog=str(self._path), tools=len(listing))
        await self._announce()
        return True

    async def run(self, interval: float = CATALOG_POLL_S) -> None:
        """Look every ``interval`` seconds until cancelled; a failed look is logged, not fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # the watch must not take the server down with it
                log.exception("mcp_catalog_watch_failed", catalog=str(self._path))
