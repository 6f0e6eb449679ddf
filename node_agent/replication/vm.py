"""Replicas of VM disks, on either pool kind (a VM's volume is a plain directory on both).

::

    source  <pool>/virtual-machines/<vm>/root.qcow2      the disk (an overlay on the image)
            running: a dirty bitmap per snapshot sent, in QEMU (drivers/qemu/backup.py)
            stopped: <pool>/virtual-machines/<vm>/.replicated/<snap>   what the disk was
                     (inode, size, times) when that snapshot was copied
            <pool>/.tmp/<pid>-in-<token>/root.qcow2       the copy being sent
    holder  <pool>/vm-replicas/<uid>/<snap>/root.qcow2   a snapshot: the whole disk, or
                                                         a delta backed by its parent's
            <pool>/vm-replicas/<uid>/.in-<token>/         one being received
            <pool>/vm-replicas/<uid>/<snap>/.dropping     one being dropped (not listed)

A running VM's copy is QEMU's backup job started in one transaction with the new
snapshot's dirty bitmap: the whole disk (flattened: it needs no image on the holder),
or the clusters written since the parent's bitmap. A stopped VM is copied with the
driver's lock held, so it cannot start meanwhile: ``qemu-img convert`` (whole), or an
empty delta when the disk is still exactly as it was at a parent snapshot copied while
stopped. The copy is made in the pool's ``.tmp`` and then streamed (``parts``) with
the UEFI variable store if the VM has one; the snapshot's bitmap or mark is dropped
again if the stream fails, so the next delta is always against what the holder has.

The holder receives into a scratch directory beside the snapshots, checks the disk,
backs a delta by its parent's disk (``qcow2_chain``) and renames it into place: a cut
stream leaves nothing. A delta must build on the newest snapshot held, so chains are
linear. After each receive the newest 2 are kept: the older ones are marked, the
oldest kept one is made whole (``qcow2_chain.flatten``: a commit of one delta, no copy
of the disk), and the marked ones go. Promotion makes the chosen snapshot whole, every
cluster allocated (``qcow2_chain.allocate_zeroes``: it then reads the same over the
image, as a live migration's target puts it), and renames its directory to the VM's
volume: a disk with no backing file, which the QEMU driver runs as it is (never the
image).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from node_agent.replication import parts, qcow2_chain
from node_agent.replication.base import discard
from node_agent.replication.errors import BadStream, ParentNotHeld
from node_agent.replication.framing import FrameWriter, Header
from node_agent.replication.names import KEEP_RECEIVED, KEEP_SENT, is_snapshot_name, to_drop
from node_agent.replication.pipes import pump_from, pump_into
from node_agent.storage.base import StoragePool
from node_agent.storage.dir import _RENAME_NOREPLACE, _check_name, _remove_tree, _rename
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound

log = logging.getLogger(__name__)
KIND = "qcow2"
DISK = qcow2_chain.DISK
VARS = "OVMF_VARS.fd"  # as node_agent.drivers.qemu.cmdline.VARS
PARTS = (DISK, VARS)
MARKS = ".replicated"
DROPPING = ".dropping"
SCRATCH = ".in-"


class VmDisks(Protocol):
    """What a source needs of the QEMU driver (``QemuDriver``)."""

    def while_stopped(self, name: str) -> AbstractContextManager[bool]: ...

    def replica_snapshots(self, name: str) -> list[str]: ...

    def replica_backup(self, name: str, target: Path, snapshot: str, since: str | None,
                       stop: threading.Event | None = None) -> bool: ...

    def drop_replica_snapshots(self, name: str, snapshots: list[str]) -> None: ...


def vm_replicas_path(pool: StoragePool, uid: str) -> Path:
    return pool.path.absolute() / "vm-replicas" / _check_name(uid)


class VmReplicas:
    kind = KIND

    def __init__(self, pool: StoragePool, vms: VmDisks | None = None) -> None:
        self.pool = pool
        self.vms = vms  # the source's QEMU driver (a holder needs none)

    # source --------------------------------------------------------------------

    def _driver(self) -> VmDisks:
        if self.vms is None:
            raise StorageError("this member runs no VMs: it cannot send a VM replica")
        return self.vms

    def sent_snapshots(self, name: str) -> list[str]:
        """The snapshots a delta can build on: bitmaps of the running VM, or the marks of
        copies made while it was stopped."""
        running = self._driver().replica_snapshots(name)
        return running or _marks(self.pool.vm_volume_path(name))

    async def send(self, name: str, uid: str, parent: str | None, snapshot: str,
                   out: FrameWriter) -> bool:
        volume = self.pool.vm_volume_path(name)
        if not (volume / DISK).is_file():
            raise VolumeNotFound(f"VM volume {name} not found")
        scratch = await asyncio.to_thread(self.pool.incoming_scratch)
        base: str | None = None
        try:
            base = await _stoppable(lambda stop: self._copy(name, volume, scratch, parent,
                                                             snapshot, stop))
            files = [(n, scratch / n) for n in PARTS if (scratch / n).is_file()]
            await out.header(Header(self.kind, uid, base, snapshot))
            await pump_from(lambda fd: _write_parts(fd, files), out.payload)
            await out.end()
        except BaseException:
            await asyncio.to_thread(self._forget, name, volume, snapshot)
            raise
        finally:
            await asyncio.to_thread(self.pool.discard_scratch, scratch)
        await asyncio.to_thread(self._trim_sent, name, volume, [base, snapshot])
        return base is None

    def _copy(self, name: str, volume: Path, scratch: Path, parent: str | None,
              snapshot: str, stop: threading.Event) -> str | None:
        """Copy the disk (and variable store) into ``scratch``; the parent it is a delta
        on, None if whole."""
        driver = self._driver()
        with driver.while_stopped(name) as stopped:
            if stopped:
                return _copy_stopped(volume, scratch, parent, snapshot)
        full = driver.replica_backup(name, scratch / DISK, snapshot, parent, stop)
        if (volume / VARS).is_file():
            shutil.copyfile(volume / VARS, scratch / VARS)
        return None if full else parent

    def _forget(self, name: str, volume: Path, snapshot: str) -> None:
        """A snapshot whose stream failed: the holder does not have it, so no delta may
        build on it. Best effort (the VM may have stopped meanwhile)."""
        with contextlib.suppress(OSError):
            (volume / MARKS / snapshot).unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            self._driver().drop_replica_snapshots(name, [snapshot])

    def _trim_sent(self, name: str, volume: Path, keep: list[str | None]) -> None:
        """Housekeeping after a good send (never its failure): all but the newest
        ``KEEP_SENT`` and ``keep`` go, bitmaps and marks alike."""
        try:
            driver = self._driver()
            held = driver.replica_snapshots(name)
            driver.drop_replica_snapshots(name, to_drop(held, KEEP_SENT, keep))
            for old in to_drop(_marks(volume), KEEP_SENT, keep):
                (volume / MARKS / old).unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.debug("trimming the replica bitmaps of %s: %s", name, exc)

    # holder --------------------------------------------------------------------

    def snapshots(self, uid: str) -> list[str]:
        """Complete snapshots of ``uid`` held here, oldest first (none being dropped)."""
        return _complete(vm_replicas_path(self.pool, uid))

    def uids(self) -> list[str]:
        root = self.pool.path.absolute() / "vm-replicas"
        try:
            names = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)
                           and not e.name.startswith("."))
        except FileNotFoundError:
            return []
        return [uid for uid in names if _complete(root / uid)]

    async def receive(self, uid: str, header: Header, payload: AsyncIterator[bytes]) -> None:
        holder = vm_replicas_path(self.pool, uid)
        target = holder / _check_name(header.snapshot)
        if os.path.lexists(target):
            raise VolumeExists(f"replica {uid}/{header.snapshot} already exists")
        held = await asyncio.to_thread(_complete, holder)
        size = None
        if header.parent is not None:
            if header.parent not in held:
                raise ParentNotHeld(f"replica {uid}/{header.parent} is not held here")
            if header.parent != held[-1]:  # chains stay linear (see the docstring)
                raise ParentNotHeld(f"a delta must build on the newest replica {held[-1]} "
                                    f"of {uid}, not on {header.parent}")
            size = await asyncio.to_thread(qcow2_chain.virtual_size,
                                           holder / header.parent / DISK)
        scratch = await asyncio.to_thread(_scratch, holder)
        try:
            await pump_into(lambda fd: _read_parts(fd, scratch), payload)
            if not (scratch / DISK).is_file():
                raise BadStream(f"the replica stream of {uid} held no disk")
            await asyncio.to_thread(qcow2_chain.adopt, scratch / DISK, header.parent, size)
            await asyncio.to_thread(_rename, scratch, target, _RENAME_NOREPLACE,
                                    f"replica {uid}/{header.snapshot}")
        finally:
            if os.path.lexists(scratch):
                await asyncio.to_thread(_remove_tree, scratch)
        await asyncio.to_thread(self._trim, uid)

    def _trim(self, uid: str) -> None:
        """Housekeeping after a good receive, so never its failure."""
        holder = vm_replicas_path(self.pool, uid)
        for old in to_drop(_complete(holder), KEEP_RECEIVED):
            _mark_dropping(holder / old)
        try:
            self._settle(holder)
        except (OSError, StorageError) as exc:
            log.warning("dropping old replicas of %s: %s (tried again after the next "
                        "receive)", uid, exc)

    def _settle(self, holder: Path) -> None:
        """Make whole every listed snapshot whose chain reaches a snapshot being
        dropped, then delete those (only then: they back the others until made whole)."""
        kept = _complete(holder)
        kept_disks = {holder / k / DISK for k in kept}
        for snap in kept:
            disk = holder / snap / DISK
            if any(below not in kept_disks for below in qcow2_chain.chain(disk, holder)):
                qcow2_chain.flatten(disk, holder)
        for entry in _snapshot_dirs(holder):
            if entry not in kept:
                self._discard(holder / entry)

    def drop(self, uid: str) -> None:
        self._discard(vm_replicas_path(self.pool, uid))

    def _discard(self, path: Path) -> None:
        discard(self.pool, path)

    def promote(self, uid: str, snapshot: str, name: str) -> None:
        holder = vm_replicas_path(self.pool, uid)
        target = self.pool.vm_volume_path(name)
        if os.path.lexists(target):
            raise VolumeExists(f"VM volume {name} already exists")
        if snapshot not in _complete(holder):
            raise VolumeNotFound(f"replica {uid}/{snapshot} not found")
        for other in _complete(holder):
            if other != snapshot:
                _mark_dropping(holder / other)
        qcow2_chain.flatten(holder / snapshot / DISK, holder)
        qcow2_chain.allocate_zeroes(holder / snapshot / DISK)
        target.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        _rename(holder / snapshot, target, _RENAME_NOREPLACE, what=f"VM volume {name}")
        with contextlib.suppress(OSError, StorageError):  # the volume is made: the promise
            self.drop(uid)


# -- source helpers ------------------------------------------------------------------------

def _marks(volume: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(volume / MARKS) if is_snapshot_name(n))
    except FileNotFoundError:
        return []


def _signature(volume: Path) -> dict[str, list[int]]:
    """What says a stopped VM's disk (and variable store) did not change: inode, size,
    modification and change times."""
    found = {}
    for name in PARTS:
        try:
            st = os.stat(volume / name)
        except FileNotFoundError:
            continue
        found[name] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return found


def _copy_stopped(volume: Path, scratch: Path, parent: str | None, snapshot: str) -> str | None:
    """A stopped VM's copy (the driver's lock held): an empty delta on ``parent`` if the
    disk is as it was when ``parent`` was copied, else the whole disk."""
    before = _signature(volume)
    base = None
    marks = volume / MARKS
    if parent is not None and is_snapshot_name(parent):
        with contextlib.suppress(OSError, ValueError):
            if json.loads((marks / parent).read_text()) == before:
                base = parent
    disk = volume / DISK
    if base is not None:
        qcow2_chain.qemu_img(["qemu-img", "create", "-q", "-f", "qcow2", str(scratch / DISK),
                          str(qcow2_chain.virtual_size(disk))], f"making a delta of {disk}")
    else:
        qcow2_chain.qemu_img(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(disk),
                          str(scratch / DISK)], f"copying {disk}")
    if (volume / VARS).is_file():
        shutil.copyfile(volume / VARS, scratch / VARS)
    if _signature(volume) != before:
        raise StorageError(f"the disk of stopped VM {volume.name} changed while copied")
    marks.mkdir(mode=0o700, exist_ok=True)
    (marks / f".{snapshot}.tmp").write_text(json.dumps(before))
    os.replace(marks / f".{snapshot}.tmp", marks / snapshot)
    return base


def _write_parts(fd: int, files: list[tuple[str, Path]]) -> None:
    with open(fd, "wb", closefd=False) as out:
        parts.write_parts(out, files)


async def _stoppable(run: Callable[[threading.Event], str | None]) -> str | None:
    """``run(stop)`` in a thread; on cancellation ``stop`` is set and the thread awaited
    (its QEMU job cancelled) before the cancellation goes on: nothing writes into a
    scratch directory that is being removed."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(run, stop))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await task
        raise


# -- holder helpers ------------------------------------------------------------------------

def _snapshot_dirs(holder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(holder)
                      if is_snapshot_name(e.name) and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _complete(holder: Path) -> list[str]:
    return [n for n in _snapshot_dirs(holder)
            if (holder / n / DISK).is_file() and not (holder / n / DROPPING).exists()]


def _mark_dropping(snapshot: Path) -> None:
    """From now on not listed, never promoted, never a parent: its disk may change (it
    is the chain root a newer snapshot is folded into)."""
    fd = os.open(snapshot / DROPPING, os.O_WRONLY | os.O_CREAT, 0o600)
    os.fsync(fd)
    os.close(fd)


def _scratch(holder: Path) -> Path:
    """A new scratch directory beside the snapshots (what earlier receives that crashed
    left there goes first: receives of one uid are serialised by ``HeldReplicas``)."""
    holder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in os.listdir(holder):
        if entry.startswith(SCRATCH):
            _remove_tree(holder / entry)
    scratch = holder / f"{SCRATCH}{secrets.token_hex(6)}"
    scratch.mkdir(mode=0o700)
    return scratch


def _read_parts(fd: int, into: Path) -> list[str]:
    with open(fd, "rb", closefd=False) as src:
        return parts.read_parts(src, into, PARTS)
