"""Replicas of VM disks between two real dir pools, with a real QEMU (TCG where KVM does
not prove itself) and the busybox VM image: a whole copy, then deltas taken by QEMU's
backup job while the guest writes, each complete snapshot on the holder identical to the
source's disk at that point (``qemu-img compare`` with the guest paused, so QEMU has
flushed its metadata); a cut stream leaves nothing and the next delta still fits; a
stopped VM goes whole once, then as empty deltas; the replica promotes into a VM that
boots with the guest's data."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from node_agent.drivers.base import InstanceDefinition
from node_agent.drivers.qemu import QemuDriver
from node_agent.drivers.qemu.accel_choice import AcceleratorChoice
from node_agent.drivers.qemu.qcow2 import backing_file
from node_agent.replication import parts
from node_agent.replication.errors import BadStream, ParentNotHeld
from node_agent.replication.framing import Header, encode_end, encode_frame, encode_header
from node_agent.replication.names import new_snapshot_name
from node_agent.replication.volumes import (
    ReplicaSent,
    list_replica_snapshots,
    promote_replica,
    receive_replica,
    replica_uids,
    send_replica,
)
from node_agent.storage.base import StoragePool
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError
from tests.integration.test_qemu_driver import (  # noqa: F401 - module fixtures
    base,
    boot,
    choice,
    image,
    qemu_pids,
    tarball,
)
from tests.integration.test_replication import _pool as pool_of_kind

pytestmark = pytest.mark.real
UID = "7d3f0c1e-9b2a-4c55-8e61-0a4b2c3d4e5f"
WRITER = ("setsid sh -c 'echo $$ > /tmp/writer; i=0; while :; do i=$((i+1)); "
          "dd if=/dev/urandom of=/mnt/root/w.$((i % 40)) bs=4k count=4 2>/dev/null; "
          "echo $i > /mnt/root/count; sleep 0.02; done' </dev/null >/dev/null 2>&1 &")


class Side:
    """One member's half: a dir pool and a QEMU driver whose VMs keep their disks on it."""

    def __init__(self, root: Path, accelerator: AcceleratorChoice) -> None:
        self.pool = DirPool("default", root / "pool")
        self.pool.ensure()
        self.driver = QemuDriver(root / "vms")
        self.driver.choice = accelerator

    def define(self, unpacked: Path, name: str) -> None:
        self.driver.define(InstanceDefinition(
            name, unpacked, {"limits.memory": "256MiB", "limits.cpu": "1"},
            {"root": {"type": "disk", "path": "/", "pool": "default"}},
            self.pool.vm_volume_path(name)))

    def disk(self, name: str) -> Path:
        return self.pool.vm_volume_path(name) / "root.qcow2"

    def clear(self) -> None:
        for name in self.driver.names():
            if self.driver.status(name) != "Stopped":
                self.driver.stop(name, force=True, timeout=0)
            self.driver.delete(name)


@pytest.fixture
def sides(base: Path, choice: AcceleratorChoice,  # noqa: F811 - the imported fixtures
          ) -> Iterator[tuple[Side, Side]]:
    root = Path(tempfile.mkdtemp(prefix="r", dir=base))  # short: QMP socket paths
    source, holder = Side(root / "src", choice), Side(root / "hold", choice)
    try:
        yield source, holder
    finally:
        source.clear()
        holder.clear()
        assert not qemu_pids(root)


async def _ship(source: Side, holder: Side, name: str, parent: str | None,
                cut_after: int | None = None) -> tuple[ReplicaSent, int]:
    """A send and a receive at once through a one-chunk queue, as the transport runs
    them; ``cut_after`` bytes drop the connection there."""
    snapshot = new_snapshot_name(list_replica_snapshots(holder.pool, UID))
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)

    async def send() -> ReplicaSent:
        sent = await send_replica(source.pool, name, UID, parent, queue.put,
                                  snapshot=snapshot, vm=source.driver)
        await queue.put(None)
        return sent

    async def chunks() -> AsyncIterator[bytes]:
        got = 0
        while (data := await queue.get()) is not None:
            if cut_after is not None and got + len(data) >= cut_after:
                yield data[:cut_after - got]
                return
            got += len(data)
            yield data

    sender = asyncio.create_task(send())
    try:
        received = await receive_replica(holder.pool, UID, parent, snapshot, chunks())
    except BaseException:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        raise
    return await sender, received


def ship(source: Side, holder: Side, name: str, parent: str | None) -> ReplicaSent:
    sent, received = asyncio.run(_ship(source, holder, name, parent))
    assert received == sent.bytes
    return sent


def replica_disk(holder: Side, snap: str) -> Path:
    return holder.pool.path.absolute() / "vm-replicas" / UID / snap / "root.qcow2"


def identical(replica: Path, disk: Path) -> bool:
    """Same guest-visible bytes (each read through its backing chain)."""
    done = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2",
                           str(replica), str(disk)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def guest(side: Side, name: str, script: str) -> str:
    result = side.driver.exec(name, ["sh", "-c", script], timeout=60)
    assert result.exit_code == 0, result
    return result.stdout.decode()


def paused(side: Side, name: str) -> _Paused:
    return _Paused(side.driver, name)


class _Paused:
    """The guest's vCPUs stopped (QMP stop also flushes QEMU's qcow2 metadata)."""

    def __init__(self, driver: QemuDriver, name: str) -> None:
        self.driver, self.name = driver, name

    def __enter__(self) -> None:
        self.driver.freeze(self.name)

    def __exit__(self, *_: object) -> None:
        self.driver.unfreeze(self.name)


@pytest.mark.timeout(300)
def test_a_running_vm_replicates_whole_then_deltas_while_writing_and_promotes(
        sides: tuple[Side, Side], image: Path) -> None:  # noqa: F811
    source, holder = sides
    source.define(image, "v1")
    boot(source.driver, "v1")
    guest(source, "v1", WRITER)
    time.sleep(1)

    with paused(source, "v1"):  # the first copy is the whole disk, flattened
        first = ship(source, holder, "v1", None)
        assert first.full and identical(replica_disk(holder, first.snapshot), source.disk("v1"))
    time.sleep(1)
    second = ship(source, holder, "v1", first.snapshot)  # while the guest writes
    assert not second.full
    time.sleep(1)
    count = guest(source, "v1", "kill $(cat /tmp/writer); sleep 0.2; sync; "
                                "cat /mnt/root/count").strip()
    assert count.isdigit() and int(count) > 0
    with paused(source, "v1"):
        # nothing the guest wrote during the second copy was lost: the third, a delta
        # on the second, is the disk exactly
        third = ship(source, holder, "v1", second.snapshot)
        assert not third.full
        assert identical(replica_disk(holder, third.snapshot), source.disk("v1"))
    print(f"\nwhole {first.bytes} B, deltas {second.bytes} B and {third.bytes} B")

    # The holder keeps the newest two: the older one made whole, the newer its delta.
    assert list_replica_snapshots(holder.pool, UID) == [second.snapshot, third.snapshot]
    assert backing_file(replica_disk(holder, second.snapshot)) is None
    assert backing_file(replica_disk(holder, third.snapshot)) == \
        f"../{second.snapshot}/root.qcow2"
    assert source.driver.replica_snapshots("v1") == [first.snapshot, second.snapshot,
                                                     third.snapshot]

    # Failover: the source's host is gone; the holder's newest replica becomes the VM's
    # disk, whole, and the VM boots with what the guest wrote.
    source.driver.stop("v1", force=True, timeout=0)
    assert promote_replica(holder.pool, UID, None, "v1") == third.snapshot
    assert replica_uids(holder.pool) == [] and list_replica_snapshots(holder.pool, UID) == []
    assert backing_file(holder.disk("v1")) is None
    mapped = subprocess.run(["qemu-img", "map", "--output=json", str(holder.disk("v1"))],
                            capture_output=True, text=True, check=True).stdout
    assert '"present": false' not in mapped  # it reads the same over any backing file
    holder.define(image, "v1")
    assert backing_file(holder.disk("v1")) is None  # not put back on the image
    boot(holder.driver, "v1")
    assert guest(holder, "v1", "cat /mnt/root/count").strip() == count


@pytest.mark.timeout(300)
def test_cut_streams_keep_nothing_and_a_stopped_vm_goes_whole_then_empty(
        sides: tuple[Side, Side], image: Path) -> None:  # noqa: F811
    source, holder = sides
    source.define(image, "v2")
    boot(source.driver, "v2")
    first = ship(source, holder, "v2", None)
    guest(source, "v2", "dd if=/dev/urandom of=/mnt/root/a bs=64k count=8; sync")

    # Cut on the way: the holder keeps nothing of it, not even a scratch directory.
    with pytest.raises((BadStream, StorageError)):
        asyncio.run(_ship(source, holder, "v2", first.snapshot, cut_after=3000))
    assert list_replica_snapshots(holder.pool, UID) == [first.snapshot]
    held = holder.pool.path / "vm-replicas" / UID
    assert sorted(p.name for p in held.iterdir()) == [first.snapshot]

    # The source fails half-way: its bitmap for that snapshot goes with the stream.
    async def failing() -> None:
        written = 0

        async def write(data: bytes) -> None:
            nonlocal written
            written += len(data)
            if written > 3000:
                raise OSError("connection reset")

        await send_replica(source.pool, "v2", UID, first.snapshot, write,
                           snapshot=new_snapshot_name([first.snapshot]), vm=source.driver)

    with pytest.raises(OSError):
        asyncio.run(failing())
    assert source.driver.replica_snapshots("v2") == [first.snapshot]

    # The next delta builds on what the holder has, and is the disk exactly.
    guest(source, "v2", "dd if=/dev/urandom of=/mnt/root/b bs=64k count=8; sync")
    with paused(source, "v2"):
        second = ship(source, holder, "v2", first.snapshot)
        assert not second.full
        assert identical(replica_disk(holder, second.snapshot), source.disk("v2"))

    # Stopped: a whole copy (bitmaps went with QEMU), then empty deltas while unchanged.
    source.driver.stop("v2", force=True, timeout=0)
    # zeroes over what the image has there (its first cluster: the ext4 superblock)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0 0 64k", str(source.disk("v2"))],
                   check=True, capture_output=True)
    third = ship(source, holder, "v2", second.snapshot)
    assert third.full
    fourth = ship(source, holder, "v2", third.snapshot)
    assert not fourth.full and fourth.bytes < 1 << 20
    assert identical(replica_disk(holder, fourth.snapshot), source.disk("v2"))
    # A delta on anything but the holder's newest is refused: chains stay linear.
    with pytest.raises(ParentNotHeld):
        asyncio.run(_ship(source, holder, "v2", third.snapshot))
    assert list_replica_snapshots(holder.pool, UID) == [third.snapshot, fourth.snapshot]

    # Promoted, the copy made while stopped (where it read zeroes it had no clusters)
    # reads the same even over the image: a live migration's target disk is an overlay
    # on it that the mirror fills with the allocated clusters only.
    assert promote_replica(holder.pool, UID, None, "v2") == fourth.snapshot
    over_image = holder.disk("v2").with_name("over-image.qcow2")
    subprocess.run(["cp", "--sparse=always", str(holder.disk("v2")), str(over_image)],
                   check=True)
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image / "rootfs.img"), str(over_image)], check=True)
    assert identical(over_image, source.disk("v2"))


def _stream(snapshot: str, parent: str | None, disk: Path) -> list[bytes]:
    """A VM replica stream as a source writes it, around ``disk``."""
    data = parts.part_header("root.qcow2", disk.stat().st_size) + disk.read_bytes()
    return [encode_header(Header("qcow2", UID, parent, snapshot)), encode_frame(data),
            encode_end(len(data))]


async def _chunks(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


@pytest.fixture(params=["dir", "btrfs"])
def holder_pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoragePool]:
    """A holder's pool of either kind (a VM's replicas are plain files on both)."""
    yield from pool_of_kind(str(request.param), tmp_path, "hold")


def test_a_holder_opens_no_backing_file_a_stream_names_and_folds_chains_after_a_crash(
        holder_pool: StoragePool, tmp_path: Path) -> None:
    pool = holder_pool
    made = tmp_path / "made.qcow2"
    # A whole disk whose header names a file of the holder's as its backing file: the
    # holder takes the clusters it carries and nothing else.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname",
                    "-F", "raw", "-u", str(made), "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", str(made)],
                   check=True, capture_output=True)
    first = new_snapshot_name()
    asyncio.run(receive_replica(pool, UID, None, first, _chunks(_stream(first, None, made))))
    held = pool.path.absolute() / "vm-replicas" / UID
    assert backing_file(held / first / "root.qcow2") is None

    def delta(pattern: int, at: str) -> Path:
        disk = tmp_path / f"delta-{pattern}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4M"],
                       check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {at} 64k",
                        str(disk)], check=True, capture_output=True)
        return disk

    names = [first]
    for pattern, at in ((0x22, "1M"), (0x33, "2M")):
        snap = new_snapshot_name(names)
        asyncio.run(receive_replica(pool, UID, names[-1], snap,
                                    _chunks(_stream(snap, names[-1], delta(pattern, at)))))
        names.append(snap)
    assert list_replica_snapshots(pool, UID) == names[1:]
    # A crash right after the commit that folds the oldest kept snapshot: it is listed
    # and reads the same; the next receive finishes the fold and drops what it folded.
    oldest, newest = held / names[1] / "root.qcow2", held / names[2] / "root.qcow2"
    subprocess.run(["qemu-img", "commit", "-q", "-d", "-f", "qcow2", "-b",
                    str(held / names[1] / "root.qcow2"), str(newest)], check=True)
    (held / names[1] / ".dropping").touch()
    assert list_replica_snapshots(pool, UID) == [names[2]]
    last = new_snapshot_name(names)
    asyncio.run(receive_replica(pool, UID, names[2], last,
                                _chunks(_stream(last, names[2], delta(0x44, "3M")))))
    assert list_replica_snapshots(pool, UID) == [names[2], last]
    assert sorted(p.name for p in held.iterdir()) == [names[2], last]
    assert not oldest.exists() and backing_file(newest) is None
    read = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x11 0 1M",
                           "-c", "read -P 0x22 1M 64k", "-c", "read -P 0x33 2M 64k",
                           "-c", "read -P 0x44 3M 64k", "-c", "read -P 0 3136k 64k",
                           str(held / last / "root.qcow2")],
                          capture_output=True, text=True, check=True)
    assert "failed" not in read.stdout + read.stderr, read.stdout
