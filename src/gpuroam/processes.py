"""Processes of this machine, read from /proc and signalled: the one copy every part uses.

The local provider's workers, the region links and the gateway are found again after a
restart through the process table, not through a stored pid alone, so these helpers agree on
what "alive" means: the kernel knows the pid (os.kill(pid, 0)) and it is not a zombie.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

PROC = Path("/proc")


def alive(pid: int) -> bool:
    """Whether `pid` runs: reaped first if it is our exited child; a zombie counts as dead."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return not zombie(pid)


def zombie(pid: int) -> bool:
    """Exited but not yet reaped; False when /proc cannot tell (no /proc, or the process just went)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> list[str] | None:
    """The process's argv, or None when it is gone or unreadable."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None


def environment(pid: int) -> list[str] | None:
    """The process's environment as `KEY=VALUE` items, or None when gone or another user's."""
    try:
        return (PROC / str(pid) / "environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None


def pids() -> Iterator[int]:
    """Every pid in the process table now."""
    return (int(entry.name) for entry in os.scandir(PROC) if entry.name.isdigit())


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group `pid` leads (a process started in its own session), else `pid`; fine if gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop(targets: Iterable[int], grace_s: float) -> None:
    """SIGTERM each, then SIGKILL whatever is still alive after `grace_s`."""
    remaining = list(targets)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [pid for pid in remaining if alive(pid)]
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
