"""Disk snapshots of a VM: qcow2 *internal* snapshots of its overlay ``root.qcow2``.

Both files are in the VM's volume directory (``<pool>/virtual-machines/<name>/``, see
driver.py), so the snapshots travel with the disk when it moves::

    <volume>/snapshots.json   {"version": 1, "snapshots": {LXD name: internal tag}}
    <volume>/root.qcow2       the overlay; its internal snapshots are named by tag

              stopped VM                      running VM (QMP on the drive "root")
    create    qemu-img snapshot -c TAG        agent `sync`, blockdev-snapshot-internal-sync
    delete    qemu-img snapshot -d TAG        blockdev-snapshot-delete-internal-sync
    apply     qemu-img snapshot -a TAG        (the driver stops the VM first)
    rename    snapshots.json only: qcow2 internal snapshots cannot be renamed

Tags are ``corral-<hex>``, never reused: qemu-img takes a digits-only argument for a
snapshot *id*, and ``qemu-img snapshot -c`` accepts a duplicate tag. The names file is
rewritten atomically *after* the disk changed: a crash in between leaves at worst an
unnamed internal snapshot (space, not an error), and a retried delete whose tag is
already gone only edits the file.

Errors (all ``DriverError``): :class:`SnapshotNotFound` (404), :class:`SnapshotExists`
(409), :class:`SnapshotError` (500, qemu-img or QMP failed; the message says which).
Everything blocks; the driver holds the VM's lock around each call. The functions below
take that volume directory (named after the VM, so it names the VM in messages).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError, NotFound
from node_agent.drivers.qemu import agent, qmp
from node_agent.drivers.qemu import cmdline as cl

NAMES = "snapshots.json"
DRIVE = "root"  # the -drive id in cmdline.qemu_argv: QMP's device name of the disk
TAG_PREFIX = "corral-"
SYNC_HELLO = 2.0  # s the guest agent has to answer before a live snapshot
SYNC_WAIT = 15.0  # s for the guest's `sync` (whatever happens, we go on after it)
QEMU_IMG_TIMEOUT = 300.0
# Runs one QMP command on the running VM: (command, arguments) -> its return value.
Qmp = Callable[[str, dict[str, Any]], Any]


class SnapshotNotFound(NotFound):
    """No snapshot of that name."""


class SnapshotExists(DriverError):
    code = 409


class SnapshotError(DriverError):
    """qemu-img or QEMU refused or failed."""


# -- the names file -------------------------------------------------------------------------

def check_name(snap: str) -> str:
    """A snapshot name as LXD allows it (the cluster validates more strictly)."""
    if (not isinstance(snap, str) or not snap or len(snap) > 255 or "/" in snap
            or "\0" in snap or snap in (".", "..")):
        raise SnapshotError(f"invalid snapshot name {snap!r}")
    return snap


def read_names(directory: Path) -> dict[str, str]:
    """LXD snapshot name -> internal tag ({} when the VM has no snapshots)."""
    path = Path(directory) / NAMES
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"unreadable {path}: {exc}") from exc
    names = doc.get("snapshots") if isinstance(doc, dict) else None
    if not isinstance(names, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise SnapshotError(f"{path}: not a snapshot names file")
    return dict(names)


def write_names(directory: Path, names: dict[str, str]) -> None:
    """Replace the names file atomically (temporary file, fsync, rename)."""
    directory = Path(directory)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{NAMES}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "snapshots": names}, handle, indent=1,
                          sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, directory / NAMES)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise SnapshotError(f"cannot write {directory / NAMES}: {exc}") from exc


def tag_of(directory: Path, snap: str) -> str:
    """The internal tag of ``snap``; raises SnapshotNotFound."""
    tag = read_names(directory).get(snap)
    if tag is None:
        raise SnapshotNotFound(f"snapshot {snap!r} of VM {Path(directory).name!r} not found")
    return tag


def new_tag() -> str:
    return f"{TAG_PREFIX}{secrets.token_hex(6)}"


# -- qemu-img (stopped VM) ----------------------------------------------------------------

_FLAGS = {"create": "-c", "apply": "-a", "delete": "-d"}


def image_opts(disk: Path) -> str:
    """The disk as ``--image-opts``: ``qemu-img snapshot`` has no ``-f``, and without a
    format qemu-img probes one (and takes a damaged qcow2 for a raw image)."""
    return f"driver=qcow2,file.filename={str(disk).replace(',', ',,')}"


def qemu_img_argv(operation: str, disk: Path, tag: str) -> list[str]:
    """``qemu-img snapshot -c|-a|-d TAG DISK`` for ``operation`` create|apply|delete."""
    if operation not in _FLAGS:
        raise ValueError(f"unknown snapshot operation {operation!r}")
    if not tag.startswith(TAG_PREFIX):  # never let a tag be read as a snapshot id
        raise SnapshotError(f"refusing internal snapshot tag {tag!r}")
    return ["qemu-img", "snapshot", "-q", "--image-opts", _FLAGS[operation], tag,
            image_opts(disk)]


def _run(argv: list[str], doing: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SnapshotError(f"{doing}: {argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise SnapshotError(f"{doing}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def disk_tags(disk: Path) -> list[str]:
    """Tags of the internal snapshots in ``disk`` (a stopped VM's: QEMU locks it)."""
    out = _run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(disk)],
               f"reading {disk}")
    try:
        return [str(s["name"]) for s in json.loads(out).get("snapshots", [])]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SnapshotError(f"qemu-img info {disk}: unexpected output: {exc}") from exc


def live_tags(run: Qmp) -> list[str]:
    """Tags of the internal snapshots of the running VM's disk (QMP query-block)."""
    for device in run("query-block", {}):
        if isinstance(device, dict) and device.get("device") == DRIVE:
            image = device.get("inserted", {}).get("image", {})
            return [str(s.get("name")) for s in image.get("snapshots", [])]
    raise SnapshotError(f"QEMU has no drive {DRIVE!r}")


# -- operations ------------------------------------------------------------------------------

def create(directory: Path, snap: str, live: Qmp | None, runtime: Path | None = None,
           ) -> None:
    """Snapshot the VM's disk as ``snap``. ``live``: QMP of the running VM, or None when it
    is stopped. A running VM's snapshot is taken without pausing it, after the guest agent
    (its socket in ``runtime``, the VM's runtime directory; else in ``directory``) ran
    ``sync`` if it answered in time; otherwise (no agent, busy, slow) the snapshot is only
    crash-consistent: what a power cut would leave. Raises SnapshotExists,
    SnapshotError."""
    directory = Path(directory)
    names = read_names(directory)
    if check_name(snap) in names:
        raise SnapshotExists(f"snapshot {snap!r} of VM {directory.name!r} already exists")
    tag = new_tag()
    doing = f"snapshot {snap!r} of VM {directory.name!r}"
    if live is None:
        _run(qemu_img_argv("create", directory / cl.DISK, tag), doing)
    else:
        guest_sync(runtime or directory)
        _qmp(live, doing, "blockdev-snapshot-internal-sync", {"device": DRIVE, "name": tag})
    write_names(directory, {**names, snap: tag})


def delete(directory: Path, snap: str, live: Qmp | None) -> None:
    """Delete ``snap`` (its internal snapshot, then its name). Raises SnapshotNotFound
    (nothing changed), SnapshotError."""
    directory = Path(directory)
    tag = tag_of(directory, snap)
    doing = f"deleting snapshot {snap!r} of VM {directory.name!r}"
    if live is None:
        if tag in disk_tags(directory / cl.DISK):
            _run(qemu_img_argv("delete", directory / cl.DISK, tag), doing)
    elif tag in live_tags(live):
        _qmp(live, doing, "blockdev-snapshot-delete-internal-sync",
             {"device": DRIVE, "name": tag})
    names = read_names(directory)
    names.pop(snap, None)
    write_names(directory, names)


def rename(directory: Path, old: str, new: str) -> None:
    """Rename ``old`` to ``new`` in the names file only. Raises SnapshotNotFound,
    SnapshotExists."""
    directory = Path(directory)
    names = read_names(directory)
    if old not in names:
        raise SnapshotNotFound(f"snapshot {old!r} of VM {directory.name!r} not found")
    if check_name(new) in names:
        raise SnapshotExists(f"snapshot {new!r} of VM {directory.name!r} already exists")
    names[new] = names.pop(old)
    write_names(directory, names)


def apply(directory: Path, snap: str) -> None:
    """Revert the stopped VM's disk to ``snap`` (later snapshots stay). Raises
    SnapshotNotFound (nothing changed), SnapshotError."""
    directory = Path(directory)
    tag = tag_of(directory, snap)
    doing = f"restoring snapshot {snap!r} of VM {directory.name!r}"
    if tag not in disk_tags(directory / cl.DISK):
        raise SnapshotError(f"{doing}: its disk has no internal snapshot {tag!r}")
    _run(qemu_img_argv("apply", directory / cl.DISK, tag), doing)


def _qmp(live: Qmp, doing: str, command: str, arguments: dict[str, Any]) -> None:
    try:
        live(command, arguments)
    except (qmp.QmpError, qmp.QmpUnavailable) as exc:
        raise SnapshotError(f"{doing}: {exc}") from exc


def guest_sync(directory: Path, hello: float = SYNC_HELLO, wait: float = SYNC_WAIT) -> bool:
    """Ask the guest agent to ``sync``; True if it did. Never raises and never waits long:
    a busy agent (another exec holds its lock) is skipped at once, and the call runs in a
    daemon thread abandoned after ``wait`` s."""
    try:
        with open(Path(directory) / agent.LOCK, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
    except OSError:
        return False
    done = threading.Event()

    def run() -> None:
        with contextlib.suppress(DriverError):
            if agent.exec_in_vm(Path(directory), ["sync"], timeout=wait,
                                hello_timeout=hello).exit_code == 0:
                done.set()

    thread = threading.Thread(target=run, name="vm-sync", daemon=True)
    thread.start()
    thread.join(wait)
    return done.is_set()
