"""The fencing lease on disk: what the daemon promises and what the watchdog enforces
(stdlib only: the watchdog imports it).

``$CORRAL_DIR/fencing/lease.json``, replaced whole (write a temporary file, fsync,
rename) after every heartbeat::

    {"daemon_pid": 1234, "daemon_starttime": 56789, "boot_id": "...",
     "deadline": 8123.4,                 # time.monotonic(): CLOCK_MONOTONIC is system-wide
     "instances": [{"name": "c1", "kind": "lxc", "pid": 4321, "starttime": 99999}],
     "fenced": ["c2"]}

``instances`` are the member's running HA instances: a container's init pid or a VM's
QEMU pid, with its start time (``proc``), so a reused pid is never killed. ``fenced``
names the HA instances a fence stopped that the daemon has not started again (a daemon
that restarts meanwhile reads them back). Readers tolerate a missing, torn or foreign
file: they get None and keep what they knew.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

LEASE = "lease.json"
KINDS = ("lxc", "qemu")


def fencing_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "fencing"


def lease_path(state_dir: Path) -> Path:
    return fencing_dir(state_dir) / LEASE


@dataclass(frozen=True)
class Listed:
    """One running HA instance's process."""

    name: str
    kind: str  # "lxc" | "qemu"
    pid: int
    starttime: int


@dataclass(frozen=True)
class Lease:
    daemon_pid: int
    deadline: float  # CLOCK_MONOTONIC seconds; after it, the instances must be dead
    instances: tuple[Listed, ...] = ()
    fenced: tuple[str, ...] = ()
    daemon_starttime: int = 0  # 0: unknown
    boot_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"daemon_pid": self.daemon_pid, "daemon_starttime": self.daemon_starttime,
                "boot_id": self.boot_id, "deadline": self.deadline,
                "instances": [{"name": i.name, "kind": i.kind, "pid": i.pid,
                               "starttime": i.starttime} for i in self.instances],
                "fenced": list(self.fenced)}


def parse_lease(data: object) -> Lease | None:
    """A lease from its JSON form; None if it is not one (a field missing or mistyped).
    Each listed instance must be whole too: a half-understood list kills too little."""
    if not isinstance(data, dict):
        return None
    pid, deadline = data.get("daemon_pid"), data.get("deadline")
    items, fenced = data.get("instances", []), data.get("fenced", [])
    if not (_is_int(pid) and isinstance(deadline, (int, float)) and not isinstance(
            deadline, bool) and isinstance(items, list) and isinstance(fenced, list)):
        return None
    listed = [_listed(item) for item in items]
    if any(item is None for item in listed) or not all(isinstance(n, str) for n in fenced):
        return None
    start, boot = data.get("daemon_starttime", 0), data.get("boot_id", "")
    return Lease(int(pid), float(deadline), tuple(i for i in listed if i is not None),
                 tuple(fenced), int(start) if _is_int(start) else 0,
                 boot if isinstance(boot, str) else "")


def _listed(item: object) -> Listed | None:
    if not isinstance(item, dict):
        return None
    name, kind, pid, start = (item.get(k) for k in ("name", "kind", "pid", "starttime"))
    if not (isinstance(name, str) and kind in KINDS and _is_int(pid) and _is_int(start)):
        return None
    return Listed(name, str(kind), int(pid), int(start))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def read_lease(path: Path) -> Lease | None:
    """The lease in ``path``; None when it is missing, torn or not a lease."""
    try:
        return parse_lease(json.loads(Path(path).read_bytes()))
    except (OSError, ValueError):
        return None


def write_lease(path: Path, lease: Lease) -> None:
    """Replace ``path`` with ``lease`` atomically (a reader sees the old or the new one,
    whole). Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, lease.to_json())


def write_json_atomically(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(json.dumps(data, separators=(",", ":")).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
