"""A process told apart from any later one that reuses its pid, and killed only if it is
still the same one (stdlib only: the watchdog imports it).

A process is named by its pid and its start time (field 22 of ``/proc/PID/stat``, in
clock ticks since boot). A pid the kernel handed to another process since has another
start time, so a fence never kills a stranger. The kill goes through a pidfd opened
*before* the start time is compared, so the pid cannot be reused between the check and
the signal either. A process in a frozen cgroup v1 freezer does not die of SIGKILL
until its cgroup thaws, so the kill thaws it too (cgroup v2's freezer lets SIGKILL through).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` from the third (state) on; [] if none. The
    command name (field 2) may hold spaces and parentheses: split after its last ')'."""
    if pid <= 0:
        return []
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rpartition(")")[2].split()


def starttime(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), None if there is none
    (or only a zombie, which is as good as gone)."""
    fields = _stat_fields(pid)
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22; fields[0] is field 3


def alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``start``."""
    return starttime(pid) == start


def kill_if_same(pid: int, start: int) -> bool:
    """SIGKILL ``pid`` if it is still the process that started at ``start``; whether it
    was signalled. Never raises for a process that is gone or another one."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if starttime(pid) != start:  # the pidfd holds the process that had the pid now
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        return False
    finally:
        os.close(fd)
    thaw(pid)
    return True


def thaw(pid: int) -> None:
    """Thaw the cgroup v1 freezer cgroups that hold ``pid`` frozen (its own and those
    above it). Best effort: a process that is not frozen is left alone."""
    root = _freezer_root()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return
    rel = next((line.split(":", 2)[2] for line in lines
                if "freezer" in line.split(":", 2)[1].split(",")), None)
    if root is None or rel is None:
        return
    path = Path(root + rel.rstrip("/"))
    while len(path.parts) > len(Path(root).parts):
        state = path / "freezer.state"
        with contextlib.suppress(OSError):
            if state.read_text().strip() != "THAWED":
                state.write_text("THAWED")
        path = path.parent


def _freezer_root() -> str | None:
    """Where the cgroup v1 freezer hierarchy is mounted (None without one)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) > 4 and len(rest) > 2 and rest[0] == "cgroup" and (
                "freezer" in rest[2].split(",")):
            return fields[4]
    return None


def boot_id() -> str:
    """This boot's id: pids, start times and CLOCK_MONOTONIC mean nothing across boots."""
    with contextlib.suppress(OSError):
        return _BOOT_ID.read_text().strip()
    return ""
