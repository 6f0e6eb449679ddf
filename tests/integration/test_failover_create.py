"""A failover's create step on real dir pools (``replication/promote.py``): the newest
replica becomes the volume, a retry after a crash keeps it, an older copy kept here is
replaced by the replica, and without a replica the step fails with a clear error instead
of making the pet again from its image. The container driver is replaced by a recorder
of ``define`` (liblxc is not what is under test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node_agent.node import InstanceSpec, LocalNode
from node_agent.replication.promote import NoReplica, create_from_replica
from node_agent.replication.volumes import list_replica_snapshots, receive_replica, send_replica
from node_agent.storage.dir import DirPool
from node_agent.volume_owner import Owner, read_owner, write_owner

pytestmark = pytest.mark.real
UID = "5e0c3f52b9c84a6f8d1e2a7b9c0d4e6f"
ROOTFS_FILE = Path("rootfs/data")


class Host:
    """The node's pools are real; ``define`` is recorded."""

    def __init__(self, pool: DirPool) -> None:
        self.pools = {"default": pool}
        self.defined: list[str] = []

    def pool(self, name: str) -> DirPool:
        return self.pools[name]

    def define(self, spec: InstanceSpec) -> None:
        self.defined.append(spec.name)


def spec(epoch: int = 1) -> InstanceSpec:
    return InstanceSpec(UID, "c1", "img", {}, {}, epoch=epoch, from_replica="r1")


def pool_at(path: Path) -> DirPool:
    pool = DirPool("default", path)
    pool.ensure()
    return pool


def volume(pool: DirPool, name: str, data: str, owner: Owner | None = None) -> None:
    rootfs = pool.rootfs_path(name)
    rootfs.mkdir(parents=True)
    (rootfs / "data").write_text(data)
    if owner is not None:
        write_owner(pool, name, owner)


def ship(source: DirPool, holder: DirPool) -> str:
    """One whole replica of the source's c1 into the holder; its snapshot."""
    async def run() -> str:
        chunks: list[bytes] = []

        async def write(data: bytes) -> None:
            chunks.append(data)

        sent = await send_replica(source, "c1", UID, None, write)

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        await receive_replica(holder, UID, None, sent.snapshot, stream())
        return sent.snapshot

    return asyncio.run(run())


@pytest.fixture
def pools(tmp_path: Path) -> tuple[DirPool, DirPool]:
    tmp_path.chmod(0o711)
    source = pool_at(tmp_path / "source")
    volume(source, "c1", "replicated", Owner(UID, 0))
    return source, pool_at(tmp_path / "holder")


def test_the_replica_becomes_the_volume_and_a_retry_keeps_it(
        pools: tuple[DirPool, DirPool]) -> None:
    source, holder = pools
    snapshot = ship(source, holder)
    host = Host(holder)
    removed: list[str] = []

    def remove(_: LocalNode, gone: InstanceSpec) -> None:
        removed.append(gone.name)

    assert create_from_replica(host, spec(), remove) == snapshot  # type: ignore[arg-type]
    assert (holder.instance_path("c1") / ROOTFS_FILE).read_text() == "replicated"
    assert read_owner(holder, "c1") == Owner(UID, 1)
    assert list_replica_snapshots(holder, UID) == []  # promoting consumed it
    # the agent crashed before its report: the create runs again and keeps the volume
    assert create_from_replica(host, spec(), remove) == ""  # type: ignore[arg-type]
    assert (holder.instance_path("c1") / ROOTFS_FILE).read_text() == "replicated"
    assert host.defined == ["c1", "c1"] and removed == []


def test_a_copy_kept_from_an_earlier_stay_gives_way_to_the_replica(
        pools: tuple[DirPool, DirPool]) -> None:
    source, holder = pools
    volume(holder, "c1", "old", Owner(UID, 0))  # it failed over away from here, then back
    ship(source, holder)
    host = Host(holder)

    def remove(_: LocalNode, gone: InstanceSpec) -> None:
        holder.delete(gone.name)

    create_from_replica(host, spec(epoch=2), remove)  # type: ignore[arg-type]
    assert (holder.instance_path("c1") / ROOTFS_FILE).read_text() == "replicated"
    assert read_owner(holder, "c1") == Owner(UID, 2)


def test_without_a_replica_the_pet_is_not_made_from_its_image(
        pools: tuple[DirPool, DirPool]) -> None:
    _, holder = pools
    host = Host(holder)
    with pytest.raises(NoReplica, match="never made again from its image"):
        create_from_replica(host, spec(), lambda *_: None)  # type: ignore[arg-type]
    assert not holder.exists("c1") and host.defined == []
    volume(holder, "c1", "someone else's", Owner("another-uid", 0))
    with pytest.raises(NoReplica, match="belongs to another instance"):
        create_from_replica(host, spec(), lambda *_: None)  # type: ignore[arg-type]
    assert (holder.instance_path("c1") / ROOTFS_FILE).read_text() == "someone else's"
