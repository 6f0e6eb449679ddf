"""Replicas on a ``btrfs`` pool: ``btrfs send``/``receive`` of read-only snapshots.

::

    source  <pool>/replication/<instance>/<snap>/   read-only snapshots sent (the newest 3
                                                    and the last parent are kept)
    holder  <pool>/replicas/<uid>/<snap>/           snapshots received, read-only once
                                                    complete

The source sends a new read-only snapshot, incrementally against the parent when it
still holds that parent, else whole. ``btrfs receive`` makes the snapshot under the same
name, writable until its stream ends; only read-only ones count as complete, and
``BtrfsPool.ensure`` deletes writable leftovers of a crash. A received snapshot is also
deleted again if the replica stream around it then turns out cut (no end mark).
Promotion is a writable snapshot of the replica (instant); the replicas go after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from node_agent.replication.errors import BadStream, ParentNotHeld
from node_agent.replication.framing import FrameWriter, Header
from node_agent.replication.names import KEEP_RECEIVED, KEEP_SENT, to_drop
from node_agent.replication.pipes import pump_from, pump_into
from node_agent.storage.btrfs import BtrfsPool
from node_agent.storage.dir import _check_name
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound


class BtrfsReplicas:
    kind = "btrfs"

    def __init__(self, pool: BtrfsPool) -> None:
        self.pool = pool

    # source --------------------------------------------------------------------

    def sent_snapshots(self, name: str) -> list[str]:
        return self.pool.list_replication_snapshots(name)

    async def send(self, name: str, uid: str, parent: str | None, snapshot: str,
                   out: FrameWriter) -> bool:
        if not await asyncio.to_thread(self.pool.exists, name):
            raise VolumeNotFound(f"instance volume {name} not found")
        held = await asyncio.to_thread(self.sent_snapshots, name)
        base = parent if parent in held else None
        made: list[str] = []

        def produce(fd: int) -> None:
            made.append(self.pool.send(name, base, fd, snap=snapshot))

        await out.header(Header(self.kind, uid, base, snapshot))
        try:
            await pump_from(produce, out.payload)
            await out.end()
        except BaseException:
            # btrfs may have written it all into the pipe before the stream failed: like a
            # dir source's manifest, a snapshot is kept only once its stream ended whole
            for snap in made:
                await asyncio.to_thread(self.pool.drop_replication_snapshot, name, snap)
            raise
        await asyncio.to_thread(self._trim_sent, name, [base, snapshot])
        return base is None

    def _trim_sent(self, name: str, keep: list[str | None]) -> None:
        """Housekeeping after a good send, so never its failure: a snapshot that another
        send of the instance still reads cannot go (EPERM), the next round retries."""
        for old in to_drop(self.sent_snapshots(name), KEEP_SENT, keep):
            with contextlib.suppress(StorageError):
                self.pool.drop_replication_snapshot(name, old)

    # holder --------------------------------------------------------------------

    def snapshots(self, uid: str) -> list[str]:
        return self.pool.list_replicas(uid)

    def uids(self) -> list[str]:
        return self.pool.replica_uids()

    async def receive(self, uid: str, header: Header, payload: AsyncIterator[bytes]) -> None:
        target = self.pool.replicas_path(uid) / _check_name(header.snapshot)
        if os.path.lexists(target):
            raise VolumeExists(f"replica {uid}/{header.snapshot} already exists")
        if header.parent is not None and header.parent not in await asyncio.to_thread(
                self.snapshots, uid):
            raise ParentNotHeld(f"replica {uid}/{header.parent} is not held here")
        made: list[str] = []

        def consume(fd: int) -> str:
            made.append(self.pool.receive(uid, fd))
            return made[-1]

        try:
            got = await pump_into(consume, payload)
            if got != header.snapshot:
                raise BadStream(f"the stream for {uid} held snapshot {got}, "
                                f"not {header.snapshot}")
        except BaseException:
            for snap in made:
                await asyncio.to_thread(self.pool.drop_replica, uid, snap)
            raise
        await asyncio.to_thread(self._trim, uid)

    def _trim(self, uid: str) -> None:
        for old in to_drop(self.snapshots(uid), KEEP_RECEIVED):
            with contextlib.suppress(StorageError):  # as in _trim_sent
                self.pool.drop_replica(uid, old)

    def drop(self, uid: str) -> None:
        self.pool.drop_replicas(uid)

    def promote(self, uid: str, snapshot: str, name: str) -> None:
        self.pool.promote_replica(uid, snapshot, name)
        with contextlib.suppress(StorageError):  # the volume is made: that is the promise
            self.pool.drop_replicas(uid)
