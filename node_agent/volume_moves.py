"""This member's side of moving an instance's volume to or from another member: what
the ``/internal/instances/<name>/volume`` handlers do to the host, without the HTTP.

The handlers check each call against the replicated state and carry the bytes between
members; this module reads and writes the pools: the volume's tar stream and listing,
the pre-copy of a running container (started from a spare copy of its image when one is
ready here, so only what changed since the image travels), the received volume's
marker (which move it came from) and its baseline, and dropping a copy.

Blocking parts run in worker threads; every method here is safe to call from the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from node_agent.agent import NodeAgent
from node_agent.drivers.base import NotFound
from node_agent.node import InstanceSpec, LocalNode
from node_agent.storage.baseline import (
    Baseline,
    clear_baseline,
    moment,
    read_baseline,
    shift_tag,
    write_baseline,
)
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError
from node_agent.storage.transfer import (
    VolumeHolder,
    discard_precopy,
    precopy_dir,
    precopy_volume,
    receive_volume,
    send_volume,
    start_precopy,
    volume_listing,
)
from node_agent.storage.vm_volumes import VmVolumes
from node_agent.volume_owner import RECEIVED_FOR

MARKER = RECEIVED_FOR  # next to rootfs: which instance uid a received volume belongs to


@dataclass(frozen=True)
class Listing:
    """A volume's paths (``transfer.volume_listing``) and its baseline's ``image:shift``
    tag ("" when it has none)."""

    paths: bytes
    baseline: str


class VolumeMoves:
    """Volume transfers of one member, over its node and agent."""

    def __init__(self, node: LocalNode, agent: NodeAgent) -> None:
        self._node = node
        self._agent = agent

    def holder(self, spec: InstanceSpec) -> VolumeHolder:
        """What holds the instance's volume here: its pool, or that pool's VM volumes.
        DriverError if the pool is not available on this member."""
        pool = self._node.pool(spec.pool)
        return VmVolumes(pool) if spec.is_vm else pool

    @staticmethod
    def moment() -> float:
        """Now, on this member's clock, as pre-copies and deltas count time."""
        return moment()

    def baseline_tag(self, spec: InstanceSpec) -> str:
        """``image:shift`` of a volume made here from a spare of the spec's image."""
        return f"{spec.image}:{shift_tag(self._node.uid_shift(spec))}"

    # The source's side.

    async def listing(self, spec: InstanceSpec) -> Listing:
        pool = self.holder(spec)
        paths = await asyncio.to_thread(volume_listing, pool, spec.name)
        baseline = await asyncio.to_thread(read_baseline, pool.instance_path(spec.name))
        tag = "" if baseline is None else f"{baseline.image}:{baseline.shift}"
        return Listing(paths, tag)

    async def baseline_since(self, spec: InstanceSpec, tag: str) -> float | None:
        """When the volume's baseline was made, if it is the receiver's ``tag``: the
        pre-copy then sends only what changed since."""
        image, _, shift = tag.partition(":")
        pool = self.holder(spec)
        baseline = await asyncio.to_thread(read_baseline, pool.instance_path(spec.name))
        return baseline.since if baseline is not None and baseline.matches(image, shift) \
            else None

    async def send(self, spec: InstanceSpec, write: Callable[[bytes], Awaitable[None]],
                   newer: float | None) -> bool:
        """Write the volume as a tar stream (only files newer than ``newer``); False if
        the pool failed half-way (the caller cuts the stream short)."""
        try:
            await send_volume(self.holder(spec), spec.name, write, newer)
        except (StorageError, OSError):
            return False
        return True

    # The target's side.

    async def precopy_began(self, spec: InstanceSpec) -> float | None:
        """When this move's pre-copy from a spare began here (None: no such pre-copy)."""
        return await asyncio.to_thread(_precopy_began, self.holder(spec), spec.uid)

    async def receive(self, spec: InstanceSpec, chunks: AsyncIterator[bytes],
                      precopied: tuple[str, bytes] | None, made: float | None) -> int:
        """Untar the volume from ``chunks`` into the pool (over this move's pre-copy when
        ``precopied``), mark it as this move's, keep or clear its baseline, and define a
        VM here (its disk repointed at this member's copy of its image). The bytes."""
        pool = self.holder(spec)
        if spec.is_vm:  # its disk is an overlay on the image
            await self._agent.ensure_image(spec.image)
        received = await receive_volume(pool, spec.name, chunks, precopied=precopied)
        await asyncio.to_thread(_mark, pool, spec)
        if made is not None:  # its pre-copy started from a spare
            await asyncio.to_thread(
                write_baseline, pool.instance_path(spec.name),
                Baseline(spec.image, shift_tag(self._node.uid_shift(spec)), made))
        elif not spec.is_vm:
            await asyncio.to_thread(clear_baseline, pool.instance_path(spec.name))
        if spec.is_vm:
            await asyncio.to_thread(self._node.define, spec)
        return received

    async def start_precopy(self, spec: InstanceSpec) -> None:
        await asyncio.to_thread(start_precopy, self.holder(spec), spec.uid)

    async def spare_ready(self, spec: InstanceSpec) -> bool:
        """Whether a spare copy of the instance's image waits in this member's pool."""
        return await asyncio.to_thread(self._spare_ready, spec)

    async def base_on_spare(self, spec: InstanceSpec) -> bool:
        """Put a spare copy of the image where the pre-copy goes (and prepare another
        spare in the background); False if none was ready."""
        taken = await asyncio.to_thread(self._base_on_spare, spec)
        if taken:
            self._agent.restock(spec)
        return taken

    async def precopy(self, spec: InstanceSpec, chunks: AsyncIterator[bytes],
                      listing: bytes | None) -> None:
        await precopy_volume(self.holder(spec), spec.uid, chunks, listing)

    async def record_precopy_began(self, spec: InstanceSpec, made: float) -> None:
        await asyncio.to_thread(_record_precopy_began, self.holder(spec), spec.uid, made)

    async def discard_precopy(self, spec: InstanceSpec) -> None:
        await asyncio.to_thread(discard_precopy, self.holder(spec), spec.uid)

    async def received_by_this_move(self, spec: InstanceSpec) -> bool:
        """Whether the volume here of that name was received for this instance uid."""
        return await asyncio.to_thread(_marked, self.holder(spec), spec)

    async def drop(self, spec: InstanceSpec) -> None:
        """Delete this member's copy of an instance that lives elsewhere: a VM (its
        directory and volume, or only its volume if it was never defined here), or a
        container and its volume (RuntimeError if it still runs here)."""
        pool = self.holder(spec)
        if isinstance(pool, VmVolumes):
            await asyncio.to_thread(self._delete_vm, pool, spec.name)
        else:
            await self._agent.forget_local_copy(spec.name, pool)

    def _delete_vm(self, volumes: VmVolumes, name: str) -> None:
        try:
            self._node.qemu().delete(name)
        except NotFound:
            volumes.delete(name, missing_ok=True)

    def _spare_ready(self, spec: InstanceSpec) -> bool:
        pool = self.holder(spec)
        template = self._node.images.ready_rootfs_template(spec.image,
                                                           self._node.uid_shift(spec))
        return (template is not None and isinstance(pool, DirPool)
                and pool.spare_count(template) > 0)

    def _base_on_spare(self, spec: InstanceSpec) -> bool:
        pool = self.holder(spec)
        template = self._node.images.ready_rootfs_template(spec.image,
                                                           self._node.uid_shift(spec))
        if template is None or not isinstance(pool, DirPool):
            return False
        volume = (precopy_dir(pool, spec.uid)
                  / pool.instance_path(spec.name).relative_to(pool.path))
        volume.parent.mkdir(mode=0o711, exist_ok=True)
        return pool.take_spare(template, volume)


def _record_precopy_began(pool: VolumeHolder, uid: str, made: float) -> None:
    path = precopy_dir(pool, uid)
    path.with_name(path.name + ".since").write_text(f"{made:.6f}")


def _precopy_began(pool: VolumeHolder, uid: str) -> float | None:
    path = precopy_dir(pool, uid)
    try:
        return float(path.with_name(path.name + ".since").read_text())
    except (OSError, ValueError):
        return None


def _mark(pool: VolumeHolder, spec: InstanceSpec) -> None:
    (pool.instance_path(spec.name) / MARKER).write_text(spec.uid)


def _marked(pool: VolumeHolder, spec: InstanceSpec) -> bool:
    try:
        return (pool.instance_path(spec.name) / MARKER).read_text() == spec.uid
    except OSError:
        return False
