"""Run ``dfm`` on a pseudo-terminal, as an operator would (progress bars, ``[y/N]`` questions)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

__all__ = ["on_a_terminal"]


def on_a_terminal(env: dict[str, str], *args: str, answer: str | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run ``dfm *args`` with a pseudo-terminal as stdin, stdout and stderr (160 columns);
    type ``answer`` once a ``[y/N]`` question shows. (exit code, what it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
        env={"PATH": os.environ["PATH"], "DFM_DATA_DIR": "/nonexistent", "TERM": "xterm-256color", **env},
    )
    os.close(slave)
    out, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"dfm {' '.join(args)} did not finish: {out.decode(errors='replace')}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if answer is not None and not answered and b"[y/N]" in out:
                os.write(master, answer.encode() + b"\n")
                answered = True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return proc.returncode, out.decode(errors="replace")
