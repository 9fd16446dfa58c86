"""Process plumbing shared by service entry points: the event loop, signals and graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived service's ``main`` to completion on uvloop.

    The consumers spend their CPU in many small round trips (PostgreSQL, NATS, the vendors'
    HTTP); asyncio's pure-Python loop and socket transports cost about a fifth of it
    (py-spy, bench/RESULTS.md "uvloop for the consumers"). uvloop is libuv's loop behind the
    same asyncio API (signal handlers, transports, executors), the one uvicorn already runs
    the ingress on."""
    uvloop.run(main)


def on_termination(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT (once; a second signal is left to the default)."""

    def _handler(signum: int) -> None:
        loop.remove_signal_handler(signum)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _handler, sig)
