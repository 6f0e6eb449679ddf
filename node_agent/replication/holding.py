"""The replicas this member holds of HA instances that run elsewhere, as the API (through
the facade) and the agent's sweep reach them.

::

    PUT /internal/ha-replicas/<uid>  ──> HeldReplicas.receive ──┐
    GET /internal/ha-replicas/<uid>  ──> HeldReplicas.snapshots  ├─> replication.volumes
    agent sweep (stale_copies)       ──> HeldReplicas.drop_if ───┘   (the pools' replicas)

Receiving and dropping one instance's replicas take the same per-uid lock: a sweep that
decided on a state read just before a shipment was accepted re-checks under the lock, so
it never drops a replica that a holder check admitted meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from node_agent.node import LocalNode
from node_agent.replication import volumes

log = logging.getLogger(__name__)


async def _no_images(fingerprint: str) -> None:
    raise RuntimeError(f"this member cannot fetch image {fingerprint[:12]}")


class HeldReplicas:
    """Replicas held on this member's pools, by instance uid."""

    def __init__(self, node: LocalNode,
                 ensure_image: Callable[[str], Awaitable[None]] = _no_images) -> None:
        """``ensure_image``: fetch an image this member lacks (``NodeAgent.ensure_image``)."""
        self._node = node
        self._ensure_image = ensure_image
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    def _pool(self, pool: str) -> Any:
        return self._node.pool(pool)  # DriverError if that pool is not on this member

    async def snapshots(self, pool: str, uid: str) -> list[str]:
        """The complete replica snapshots of ``uid`` held here, oldest first."""
        return await asyncio.to_thread(volumes.list_replica_snapshots, self._pool(pool), uid)

    async def receive(self, pool: str, uid: str, parent: str | None, snapshot: str,
                      chunks: AsyncIterator[bytes], vm_image: str = "") -> int:
        """Keep ``snapshot`` of ``uid`` from a replica stream (a delta on ``parent``); the
        bytes read. It is held only once the whole stream arrived and checked out;
        otherwise the storage error is raised and nothing of it stays. ``vm_image``: the
        instance is a VM of that image, fetched here first if missing (a VM promoted here
        boots from its kernel; failing that is logged, the replica still taken)."""
        if vm_image:
            try:
                await self._ensure_image(vm_image)
            except Exception as exc:  # noqa: BLE001 - the failover's create tries again
                log.warning("the image of VM replica %s is not here: %s", uid, exc)
        async with self._lock(uid):
            return await volumes.receive_replica(self._pool(pool), uid, parent, snapshot,
                                                 chunks)

    async def uids(self) -> dict[str, list[str]]:
        """The uids with replicas here, by pool name."""
        def scan() -> dict[str, list[str]]:
            return {name: volumes.replica_uids(pool) for name, pool in self._node.pools.items()}

        return await asyncio.to_thread(scan)

    async def drop_if(self, pool: str, uid: str, stale: Callable[[], bool]) -> bool:
        """Drop every replica of ``uid`` on ``pool`` if ``stale()`` still holds under the
        lock that receiving takes; whether they were dropped."""
        async with self._lock(uid):
            if not stale():
                return False
            await asyncio.to_thread(volumes.drop_replicas, self._pool(pool), uid)
            return True

    @contextlib.asynccontextmanager
    async def _lock(self, uid: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(uid, asyncio.Lock())
        self._users[uid] = self._users.get(uid, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[uid] -= 1
            if not self._users[uid]:  # nobody waits: the table stays as small as the work
                del self._users[uid], self._locks[uid]
