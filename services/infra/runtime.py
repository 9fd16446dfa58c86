"""Process plumbing shared by service entry points: signals and graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def on_termination(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT (once; a second signal is left to the default)."""

    def _handler(signum: int) -> None:
        loop.remove_signal_handler(signum)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _handler, sig)
