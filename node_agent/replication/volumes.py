"""Replicas of instance volumes, one interface over both pool kinds.

A *source* (the member running an HA instance) sends snapshots of its root volume to
*holders*; a holder keeps the newest complete ones and, on failover, promotes one into
the instance's volume. Every stream is framed (``framing``): a header naming the pool
kind, instance uid, parent and snapshot, then the payload, then an end mark written only
once the payload's producer succeeded. Source and holder pools must be of one kind for
a container; a VM's disk (``vm.VmReplicas``: QEMU's backup job, qcow2 files) replicates
between pools of either kind, and is kept apart from containers' replicas.

Async functions take or produce byte chunks; the others block (run them in threads).
Errors: ``node_agent.storage.errors`` and ``replication.errors`` (ParentNotHeld: send
the whole volume instead; BadStream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from node_agent.replication.base import ReplicaSent, ReplicaStore
from node_agent.replication.btrfs import BtrfsReplicas
from node_agent.replication.dir import DirReplicas
from node_agent.replication.errors import BadStream
from node_agent.replication.framing import FrameWriter, StreamReader
from node_agent.replication.names import is_snapshot_name, moment_ns, next_snapshot_name
from node_agent.replication.vm import VmDisks, VmReplicas
from node_agent.storage.base import StoragePool
from node_agent.storage.btrfs import BtrfsPool
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound

__all__ = ["ReplicaSent", "VmDisks", "can_replicate", "drop_replicas", "list_replica_snapshots",
           "promote_replica", "receive_replica", "replica_uids", "send_replica"]


def _store(pool: StoragePool) -> ReplicaStore:
    if isinstance(pool, BtrfsPool):
        return BtrfsReplicas(pool)
    if isinstance(pool, DirPool):
        return DirReplicas(pool)
    raise StorageError(f"storage pool {pool.name} ({pool.driver}) cannot hold replicas",
                       code=400)


def _vm_store(pool: StoragePool, vms: VmDisks | None = None) -> VmReplicas:
    if not can_replicate(pool):
        raise StorageError(f"storage pool {pool.name} ({pool.driver}) cannot hold replicas",
                           code=400)
    return VmReplicas(pool, vms)


def _holding(pool: StoragePool, uid: str) -> ReplicaStore:
    """The store that holds ``uid``'s replicas here: the VM one if it has any."""
    vm = _vm_store(pool)
    return vm if vm.snapshots(uid) else _store(pool)


def can_replicate(pool: StoragePool) -> bool:
    return isinstance(pool, BtrfsPool | DirPool)


async def send_replica(pool: StoragePool, name: str, uid: str, parent: str | None,
                       write: Callable[[bytes], Awaitable[None]],
                       snapshot: str | None = None, vm: VmDisks | None = None) -> ReplicaSent:
    """Write a new snapshot of instance ``name`` (uid ``uid``) through ``write``: what
    changed since snapshot ``parent`` if this source still holds it, else the whole
    volume. ``snapshot`` names it (``names.new_snapshot_name``) for a caller that must
    tell the holder before the stream starts; by default it is named now. ``vm``: the
    instance is a VM run by that driver (its disk is sent, ``vm.VmReplicas``). On any
    error the stream lacks its end mark, so the holder keeps nothing of it; the caller
    should cut it short. Raises VolumeNotFound, VolumeExists, StorageError."""
    store: ReplicaStore = _store(pool) if vm is None else _vm_store(pool, vm)
    sent = await asyncio.to_thread(store.sent_snapshots, name)
    if snapshot is None:
        snapshot = next_snapshot_name(time.time_ns(), sent)
    if not is_snapshot_name(snapshot):
        raise StorageError(f"invalid replica snapshot name {snapshot!r}", code=400)
    if snapshot in sent:
        raise VolumeExists(f"replica snapshot {name}/{snapshot} already exists")
    if parent is not None and is_snapshot_name(parent) and moment_ns(parent) >= moment_ns(
            snapshot):
        raise StorageError(f"replica snapshot {snapshot} is not newer than its parent "
                           f"{parent}", code=400)
    out = FrameWriter(write)
    full = await store.send(name, uid, parent, snapshot, out)
    return ReplicaSent(snapshot, out.sent, full)


async def receive_replica(pool: StoragePool, uid: str, parent: str | None, snapshot: str,
                          chunks: AsyncIterator[bytes]) -> int:
    """Make ``snapshot`` of instance ``uid`` here from a ``send_replica`` stream; it
    appears in ``list_replica_snapshots`` only once complete, and the newest 2 are kept.
    The stream may be whole although ``parent`` was asked for (the source no longer held
    it). Returns the bytes read. Raises BadStream (a stream for another instance,
    snapshot or pool kind, or cut short), ParentNotHeld, VolumeExists; on any error
    nothing of the stream is left."""
    reader = StreamReader(chunks)
    header = await reader.header()
    store: ReplicaStore = _vm_store(pool) if header.kind == VmReplicas.kind else _store(pool)
    if header.kind != store.kind:
        raise BadStream(f"a {header.kind} replica stream cannot go into a {store.kind} pool")
    if header.uid != uid or header.snapshot != snapshot:
        raise BadStream(f"the stream holds snapshot {header.snapshot} of {header.uid}, "
                        f"not {snapshot} of {uid}")
    if not is_snapshot_name(snapshot):
        raise BadStream(f"invalid replica snapshot name {snapshot!r}")
    if header.parent is not None:
        if header.parent != parent:
            raise BadStream(f"the stream is a delta against {header.parent}, not {parent}")
        if not is_snapshot_name(header.parent) or moment_ns(header.parent) >= moment_ns(
                snapshot):
            raise BadStream(f"invalid parent {header.parent!r} of {snapshot}")
    await store.receive(uid, header, reader.payload())
    return reader.received


def list_replica_snapshots(pool: StoragePool, uid: str) -> list[str]:
    """Complete snapshots of ``uid`` held here, oldest first."""
    return _holding(pool, uid).snapshots(uid)


def drop_replicas(pool: StoragePool, uid: str) -> None:
    """Delete every snapshot of ``uid`` held here (none: nothing to do)."""
    _store(pool).drop(uid)
    _vm_store(pool).drop(uid)


def replica_uids(pool: StoragePool) -> list[str]:
    """Uids of the instances with a complete snapshot held here, sorted."""
    return sorted({*_store(pool).uids(), *_vm_store(pool).uids()})


def promote_replica(pool: StoragePool, uid: str, snapshot: str | None, name: str) -> str:
    """Make the newest (or the named) complete snapshot of ``uid`` the instance volume
    ``name``, laid out as the pool's own (``rootfs/`` inside; a VM's: its volume
    directory with a whole ``root.qcow2``); returns the snapshot used. Afterwards this
    pool holds no replica of ``uid``: dir renames the snapshot (instant; the older ones
    share its inodes and go first), btrfs makes a writable snapshot of it, a VM's is
    made whole (one delta committed) and renamed. Raises VolumeExists if the volume
    exists, VolumeNotFound without such a snapshot."""
    store = _holding(pool, uid)
    held = store.snapshots(uid)
    chosen = snapshot if snapshot is not None else (held[-1] if held else None)
    if chosen is None or chosen not in held:
        raise VolumeNotFound(f"no complete replica {uid}/{snapshot or '(newest)'} here")
    if store.kind != VmReplicas.kind and pool.exists(name):
        raise VolumeExists(f"instance volume {name} already exists")
    store.promote(uid, chosen, name)
    return chosen
