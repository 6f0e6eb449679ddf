"""Where an instance really runs, read from /proc: the HA tests' and benchmark's eyes.

Corral's own view (the API's ``location`` and ``status``) is what is being tested, so the
double-running check must not trust it: a container runs on a member when that member's
``[lxc monitor] <root>/containers <name>`` process is alive, a VM when a QEMU process
with ``-pidfile <root>/vms/<name>/qemu.pid`` is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from devtools.host_kill import Proc, read_procs


def hosts_running(procs: list[Proc], roots: Mapping[str, Path], name: str) -> list[str]:
    """The members (by name, from ``roots``: member -> CORRAL_DIR) whose host runs
    container or VM ``name`` according to ``procs`` (pure)."""
    found = set()
    for proc in procs:
        if proc.state == "Z":
            continue
        words = proc.cmdline.split()
        qemu = bool(words) and words[0].rsplit("/", 1)[-1].startswith("qemu-system")
        if not qemu and "[lxc monitor]" not in proc.cmdline:
            continue
        for member, root in roots.items():
            if qemu and f"{root}/vms/{name}/qemu.pid" in words:
                found.add(member)
            if not qemu and proc.cmdline.rstrip().endswith(f"{root}/containers {name}"):
                found.add(member)
    # A member counts once: while a container starts, its init is a fork of the monitor
    # with the monitor's command line until it execs (two processes, one host).
    return sorted(found)


def running_on(roots: Mapping[str, Path], name: str) -> list[str]:
    """``hosts_running`` on this machine's /proc now."""
    return hosts_running(read_procs(), roots, name)
