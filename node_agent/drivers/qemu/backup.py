"""Point-in-time copies of a running VM's disk for HA replicas: QEMU's backup job and
dirty bitmaps, through QMP (the replica store is ``node_agent/replication/vm.py``).

::

    snapshot S, first time (or no bitmap for the parent P):
      transaction [block-dirty-bitmap-add  corral-replica-S            on drive "root",
                   blockdev-backup          sync=full                  -> target file]
    snapshot S on top of P (bitmap corral-replica-P still here):
      transaction [block-dirty-bitmap-add  corral-replica-S,
                   blockdev-backup          sync=bitmap corral-replica-P, bitmap-mode=never]

A transaction drains the guest's I/O and starts both at one instant: the new bitmap
records every write after the copy's point in time, and the copy-before-write filter of
the backup job keeps the target at that point while the guest goes on. The target (a
qcow2 made here, no backing file) holds every cluster (full; zero clusters as zero
flags) or the clusters written since P (bitmap; a cluster zeroed since P is an explicit
zero cluster), so laid on the holder's copy of P it reads as the disk at S.

``bitmap-mode=never`` leaves P's bitmap as it was plus what the guest wrote during the
job (QEMU merges the job's successor bitmap back): it records everything since P, not
since S, so a holder that never got S (the stream was cut after the job) still gets a
correct delta on P next time. Each sent snapshot keeps its own bitmap, as a btrfs
source keeps its read-only snapshots; the caller drops old ones (``drop_bitmaps``).

The bitmaps are not persistent: a QEMU that stops, restarts or moves has none, and the
next replica is whole. One backup per VM at a time (QEMU refuses a bitmap a job uses),
and none while the VM migrates out (its disk mirror is a block job too): both hold the
VM's lock (``lock_for``: one per QMP socket). The target node and job are named ``crepl-S``;
what a crashed daemon left of them (a job, a node) is cleared before the next backup.
Errors: ``BackupError`` (a DriverError).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError
from node_agent.drivers.qemu import qmp

DRIVE = "root"  # the -drive id in cmdline.qemu_argv
BITMAP_PREFIX = "corral-replica-"
NODE_PREFIX = "crepl-"  # node names and job ids: at most 31 characters
JOB_TIMEOUT = 1800.0
POLL = 0.02  # s between looks at the job, doubled up to POLL_MAX
POLL_MAX = 0.25
QEMU_IMG_TIMEOUT = 120.0
# Runs one QMP command on the running VM: (command, arguments) -> its return value.
Qmp = Callable[[str, dict[str, Any]], Any]

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class BackupError(DriverError):
    """QEMU refused or failed a backup, or it was stopped."""


def bitmap_name(snapshot: str) -> str:
    return f"{BITMAP_PREFIX}{snapshot}"


def lock_for(key: str) -> threading.Lock:
    """The lock that serialises backups of one VM (``key``: its QMP socket)."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _node_of_drive(run: Qmp) -> dict[str, Any]:
    """The format node (qcow2) behind the drive, as query-named-block-nodes shows it."""
    name = ""
    for device in run("query-block", {}):
        if isinstance(device, dict) and device.get("device") == DRIVE:
            name = str((device.get("inserted") or {}).get("node-name", ""))
    if not name:
        raise BackupError(f"QEMU has no drive {DRIVE!r}")
    for node in run("query-named-block-nodes", {"flat": True}):
        if isinstance(node, dict) and node.get("node-name") == name:
            return node
    raise BackupError(f"QEMU has no block node {name!r}")


def snapshots_held(run: Qmp) -> list[str]:
    """The snapshots this VM's QEMU has a bitmap of (``bitmap_name``), sorted."""
    node = _node_of_drive(run)
    names = [str(b.get("name", "")) for b in node.get("dirty-bitmaps") or []
             if isinstance(b, dict)]
    return sorted(n[len(BITMAP_PREFIX):] for n in names if n.startswith(BITMAP_PREFIX))


def virtual_size(run: Qmp) -> int:
    return int(_node_of_drive(run)["image"]["virtual-size"])


def backup(run: Qmp, lock: threading.Lock, target: Path, snapshot: str, since: str | None,
           stop: threading.Event | None = None, timeout: float = JOB_TIMEOUT) -> bool:
    """Copy the disk as it is now into a new qcow2 file ``target`` and start bitmap
    ``snapshot``; only what changed since snapshot ``since`` if its bitmap is here, else
    all of it. Whether it was all of it. ``stop`` set: the job is cancelled. On failure
    the new bitmap is removed again and BackupError raised (the target is left to the
    caller). ``lock``: the VM's (``lock_for``), held throughout."""
    with lock:
        _clear_leftovers(run)
        held = snapshots_held(run)
        if snapshot in held:
            raise BackupError(f"a replica bitmap for {snapshot} exists already")
        base = since if since is not None and since in held else None
        _create_target(target, virtual_size(run))
        node = f"{NODE_PREFIX}{snapshot}"
        _call(run, "blockdev-add", {"driver": "qcow2", "node-name": node,
                                    "file": {"driver": "file", "filename": str(target)}})
        try:
            job: dict[str, Any] = {"job-id": node, "device": DRIVE, "target": node,
                                   "sync": "full", "auto-dismiss": False}
            if base is not None:
                job.update({"sync": "bitmap", "bitmap": bitmap_name(base),
                            "bitmap-mode": "never"})
            _call(run, "transaction", {"actions": [
                {"type": "block-dirty-bitmap-add",
                 "data": {"node": DRIVE, "name": bitmap_name(snapshot)}},
                {"type": "blockdev-backup", "data": job}]})
            try:
                _wait(run, node, stop, timeout)
            except BaseException:
                drop_bitmaps(run, [snapshot])
                raise
        finally:
            _quietly(run, "blockdev-del", {"node-name": node})
    return base is None


def drop_bitmaps(run: Qmp, snapshots: Iterable[str]) -> None:
    """Remove the bitmaps of ``snapshots`` (those already gone are fine)."""
    for snapshot in snapshots:
        _quietly(run, "block-dirty-bitmap-remove",
                 {"node": DRIVE, "name": bitmap_name(snapshot)})


def _wait(run: Qmp, job_id: str, stop: threading.Event | None, timeout: float) -> None:
    """Until the job concluded (then dismissed); BackupError if it failed, was cancelled
    (``stop``) or ran past ``timeout`` s (then it is cancelled)."""
    deadline = time.monotonic() + timeout
    pause = POLL
    cancelled = ""
    while True:
        job = next((j for j in run("query-jobs", {}) if j.get("id") == job_id), None)
        if job is None:
            raise BackupError(f"backup job {job_id} vanished")
        if job.get("status") == "concluded":
            _quietly(run, "job-dismiss", {"id": job_id})
            if job.get("error") or cancelled:
                raise BackupError(f"backup job {job_id} failed: "
                                  f"{job.get('error') or cancelled}")
            return
        if not cancelled and stop is not None and stop.is_set():
            cancelled = "stopped by its caller"
        if not cancelled and time.monotonic() > deadline:
            cancelled = f"no end after {timeout:g} s"
        if cancelled:
            _quietly(run, "job-cancel", {"id": job_id, "force": True})
        time.sleep(pause)
        pause = min(pause * 2, POLL_MAX)


def _clear_leftovers(run: Qmp) -> None:
    """Cancel and dismiss the jobs and delete the target nodes a backup whose daemon
    died left in this QEMU (with the lock held, none of this process runs)."""
    for job in run("query-jobs", {}):
        job_id = str(job.get("id", ""))
        if job_id.startswith(NODE_PREFIX):
            if job.get("status") != "concluded":
                _quietly(run, "job-cancel", {"id": job_id, "force": True})
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and any(
                        j.get("id") == job_id and j.get("status") != "concluded"
                        for j in run("query-jobs", {})):
                    time.sleep(POLL)
            _quietly(run, "job-dismiss", {"id": job_id})
    for node in run("query-named-block-nodes", {"flat": True}):
        name = str(node.get("node-name", "")) if isinstance(node, dict) else ""
        if name.startswith(NODE_PREFIX):
            _quietly(run, "blockdev-del", {"node-name": name})


def _create_target(target: Path, size: int) -> None:
    try:
        done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target),
                               str(size)], capture_output=True, text=True,
                              timeout=QEMU_IMG_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"qemu-img create {target}: {exc}") from exc
    if done.returncode != 0:
        raise BackupError(f"qemu-img create {target}: {done.stderr.strip()}")


def _call(run: Qmp, command: str, arguments: dict[str, Any]) -> Any:
    try:
        return run(command, arguments)
    except qmp.QmpError as exc:
        raise BackupError(str(exc)) from exc


def _quietly(run: Qmp, command: str, arguments: dict[str, Any]) -> None:
    """Clean-up that may find nothing to clean (QEMU refuses: it was not there), or no
    QEMU at all (it stopped: nothing of it is left)."""
    try:
        run(command, arguments)
    except (qmp.QmpError, qmp.QmpUnavailable):
        pass
