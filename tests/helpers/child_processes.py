"""The child processes of this process, read from /proc (Linux), to find the ones a test left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def child_processes() -> dict[int, str]:
    """PID -> "name (state)" of every process whose parent is this one, zombies (state Z) included."""
    me = os.getpid()
    children = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited while we looked
        name, _, rest = stat.partition(" (")[2].rpartition(") ")
        state, ppid = rest.split()[:2]
        if int(ppid) == me:
            children[int(entry.name)] = f"{name} ({state})"
    return children


def kill(pids: list[int]) -> None:
    """SIGKILL what a test left running, so it cannot disturb the tests after it (its owner reaps it)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
