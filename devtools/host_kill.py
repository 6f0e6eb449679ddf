"""Kill a whole dev-cluster host at once, as a power cut would (``dev-cluster kill --host``).

A member's host is more than its daemon: each container has an ``[lxc monitor] <lxcpath>
<name>`` process and its own init with children, each VM a QEMU process, each network a
dnsmasq. A process belongs to the member of ``CORRAL_DIR=root`` when any of these holds
(``host_pids``, pure):

- its environment has ``CORRAL_DIR=root`` (the daemon and what it spawned: monitors,
  QEMU, dnsmasq, forkers);
- its command line names a path under ``root`` (``[lxc monitor] ROOT/containers c1``,
  ``qemu ... -pidfile ROOT/vms/v1/qemu.pid``), which holds even with a scrubbed
  environment;
- it runs in a cgroup under the member's prefix (``Paths.cgroup_prefix``): a
  container's init and everything it forked, whose environment LXC cleared;
- it descends from one of those.

Everything found is SIGKILLed, and the table read again until nothing of the member is
left (a container may fork while it dies), so that afterwards nothing of the member runs.
The caller and its ancestors are spared (a CLI run with that member's ``CORRAL_DIR``).
Container cgroups left empty are removed, as a reboot would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from node_agent.drivers.lxc_state import remove_cgroup_dirs
from node_agent.paths import Paths


@dataclass(frozen=True)
class Proc:
    """What /proc says of one process (``state`` "Z" for a zombie)."""

    pid: int
    ppid: int
    state: str
    cmdline: str
    environ: frozenset[str]
    cgroups: tuple[str, ...]  # the path of each hierarchy's line in /proc/PID/cgroup


def host_pids(procs: Iterable[Proc], root: Path, cgroup_prefix: str,
              spare: Iterable[int] = ()) -> set[int]:
    """The live processes of the member whose ``CORRAL_DIR`` is ``root`` (module
    docstring), without ``spare``."""
    table = {p.pid: p for p in procs if p.state != "Z"}
    env = f"CORRAL_DIR={root}"
    under = f"{root}/"
    in_cgroup = f"/{cgroup_prefix}/"
    found = {pid for pid, p in table.items()
             if env in p.environ or under in p.cmdline
             or any(in_cgroup in f"{c}/" for c in p.cgroups)}
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found - set(spare)


def read_proc(pid: int) -> Proc | None:
    """One process from /proc, or None when it is gone (or unreadable)."""
    base = Path(f"/proc/{pid}")
    try:
        stat = (base / "stat").read_text().rsplit(")", 1)[1].split()
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        environ = (base / "environ").read_bytes().split(b"\0")
        cgroups = (base / "cgroup").read_text().splitlines()
    except (OSError, IndexError):
        return None
    return Proc(pid, int(stat[1]), stat[0], cmdline,
                frozenset(e.decode(errors="replace") for e in environ if e),
                tuple(line.split(":", 2)[2] for line in cgroups if line.count(":") >= 2))


def read_procs() -> list[Proc]:
    """Every process this machine shows in /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            found.append(proc)
    return found


def ancestors(pid: int) -> set[int]:
    """``pid`` and every process above it."""
    chain = set()
    while pid > 0 and pid not in chain:
        chain.add(pid)
        proc = read_proc(pid)
        pid = proc.ppid if proc is not None else 0
    return chain


def remaining(root: Path) -> set[int]:
    """The processes of the member of ``root`` still running (the caller spared)."""
    return host_pids(read_procs(), root, Paths(root).cgroup_prefix, ancestors(os.getpid()))


def kill_host(root: Path, timeout: float = 10.0) -> set[int]:
    """SIGKILL every process of the member of ``root`` until none is left; the pids
    killed. TimeoutError if some still run after ``timeout`` s."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while alive := remaining(root):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still running after SIGKILL: {sorted(alive)}")
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= alive
        time.sleep(0.05)
    _remove_container_cgroups(root)
    return killed


def _remove_container_cgroups(root: Path) -> None:
    """rmdir the member's emptied container cgroups (a reboot leaves none)."""
    prefix = Paths(root).cgroup_prefix
    hierarchies = tuple(str(p.parent) for p in Path("/sys/fs/cgroup").glob(f"*/{prefix}"))
    if Path(f"/sys/fs/cgroup/{prefix}").is_dir():
        hierarchies += ("/sys/fs/cgroup",)
    remove_cgroup_dirs(hierarchies, prefix, wait=1.0)
