"""Replicas of instance volumes between two real pools of each kind (dir, and btrfs on
loop files), as root: full then incremental rounds reproduce the source exactly, older
snapshots never change, cut streams leave nothing, and a replica promotes to a volume."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.replication.errors import BadStream, ParentNotHeld
from node_agent.replication.framing import (
    Header,
    StreamReader,
    encode_end,
    encode_frame,
    encode_header,
)
from node_agent.replication.names import new_snapshot_name
from node_agent.replication.volumes import (
    ReplicaSent,
    drop_replicas,
    list_replica_snapshots,
    promote_replica,
    receive_replica,
    replica_uids,
    send_replica,
)
from node_agent.storage import btrfs_cli, manifest
from node_agent.storage.base import StoragePool
from node_agent.storage.btrfs import BtrfsPool
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound
from tests.integration.test_dir_pool import ROOT, make_template, tree_state

pytestmark = pytest.mark.real
UID = "0b9c6a2e-4c1f-4d8e-9a57-3f0e2b1c7d11"


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown to mapped uids, mounts)")


def _btrfs(base: Path, name: str) -> Iterator[BtrfsPool]:
    problem = btrfs_cli.problem()
    if problem:
        pytest.skip(problem)
    pool = BtrfsPool(name, base / "storage-pools" / name, {"size": "256MiB"}, base / "disks")
    try:
        pool.ensure()
        yield pool
    finally:
        if btrfs_cli.mount_source(pool.path) is not None:
            btrfs_cli.unmount(pool.path)


def _pool(kind: str, base: Path, name: str) -> Iterator[StoragePool]:
    if kind == "btrfs":
        yield from _btrfs(base, name)
        return
    pool = DirPool(name, base / name)
    pool.ensure()
    yield pool


@pytest.fixture(params=["dir", "btrfs"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def source(kind: str, tmp_path: Path) -> Iterator[StoragePool]:
    yield from _pool(kind, tmp_path, "src")


@pytest.fixture
def holder(kind: str, tmp_path: Path) -> Iterator[StoragePool]:
    yield from _pool(kind, tmp_path, "hold")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    return make_template(tmp_path / "template")


async def _ship(source: StoragePool, holder: StoragePool, parent: str | None,
                cut_after: int | None = None, name: str = "c1") -> tuple[ReplicaSent, int]:
    """Run a send and a receive at once through a one-chunk queue (back-pressure), as
    the transport would; ``cut_after`` bytes drop the connection there."""
    snapshot = new_snapshot_name()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)

    async def write(data: bytes) -> None:
        await queue.put(data)

    async def send() -> ReplicaSent:
        sent = await send_replica(source, name, UID, parent, write, snapshot=snapshot)
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
        received = await receive_replica(holder, UID, parent, snapshot, chunks())
    except BaseException:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        raise
    return await sender, received


def _snap(holder: StoragePool, snap: str) -> Path:
    return holder.path / "replicas" / UID / snap


def _sent(source: StoragePool) -> list[str]:
    found = os.listdir(source.path / "replication" / "c1")
    return sorted(n for n in found if n.startswith("r"))


def _round_one(rootfs: Path) -> None:
    """Add, modify (a hard-linked file), delete, chmod, chown, symlink, xattr, and move a
    directory whose files keep their old change times."""
    (rootfs / "new-file").write_bytes(b"added\n")
    (rootfs / "etc/hostname").write_text("changed\n")
    (rootfs / "bin/cat").unlink()
    (rootfs / "etc/shadow").chmod(0o600)
    os.chown(rootfs / "bin/busybox", ROOT + 5, ROOT + 5)
    (rootfs / "bin/vi").symlink_to("busybox")
    os.setxattr(rootfs / "new-file", "user.corral", b"round one")
    os.rename(rootfs / "usr/share", rootfs / "usr/shared")
    (rootfs / "var/cache").mkdir()
    (rootfs / "var/cache/data").write_bytes(os.urandom(1 << 12))


def _round_two(rootfs: Path) -> None:
    """A directory becomes a file and a file a directory, a tree goes, a file is
    rewritten in place, an xattr changes, and a directory is swapped for another one
    holding the same names."""
    shutil.rmtree(rootfs / "var/empty")
    (rootfs / "var/empty").write_text("now a file\n")
    (rootfs / "new-file").unlink()
    (rootfs / "new-file").mkdir()
    with open(rootfs / "etc/hostname", "r+") as f:
        f.write("CHANGED\n")
    os.setxattr(rootfs / "etc/hostname", "user.corral", b"round two")
    (rootfs / "var/cache.new").mkdir()
    (rootfs / "var/cache.new/data").write_bytes(b"swapped in")
    shutil.rmtree(rootfs / "var/cache")
    os.rename(rootfs / "var/cache.new", rootfs / "var/cache")


def test_full_then_incremental_rounds_reproduce_the_volume_and_keep_old_snapshots_intact(
        kind: str, source: StoragePool, holder: StoragePool, template: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # no slack: a delta carries only what the manifest says changed, which this proves
    monkeypatch.setattr(manifest, "SLACK_NS", 0)
    rootfs = source.create_from_template("c1", template)
    (rootfs / "big").write_bytes(os.urandom(1 << 20))  # never changes: never sent again
    volume = source.instance_path("c1")
    states: dict[str, dict[str, Any]] = {}

    first, got = asyncio.run(_ship(source, holder, None))
    assert first.full and got == first.bytes > 0
    states[first.snapshot] = tree_state(volume)
    assert tree_state(_snap(holder, first.snapshot)) == states[first.snapshot]

    _round_one(rootfs)
    second, _ = asyncio.run(_ship(source, holder, first.snapshot))
    assert not second.full and second.bytes * 4 < first.bytes
    states[second.snapshot] = tree_state(volume)
    assert tree_state(_snap(holder, second.snapshot)) == states[second.snapshot]
    assert tree_state(_snap(holder, first.snapshot)) == states[first.snapshot]  # untouched
    old, new = (_snap(holder, s.snapshot) / "rootfs" for s in (first, second))
    assert (old / "etc/hostname").read_text() == "template\n"
    if kind == "dir":  # unchanged files are hard links into the older snapshot, changed
        assert (old / "big").stat().st_ino == (new / "big").stat().st_ino  # ones are not
        assert (old / "etc/hostname").stat().st_ino != (new / "etc/hostname").stat().st_ino

    _round_two(rootfs)
    third, _ = asyncio.run(_ship(source, holder, second.snapshot))
    assert not third.full and third.bytes * 4 < first.bytes
    states[third.snapshot] = tree_state(volume)
    assert tree_state(_snap(holder, third.snapshot)) == states[third.snapshot]
    assert tree_state(_snap(holder, second.snapshot)) == states[second.snapshot]

    # keep-newest-2 on the holder, at most 3 at the source; none is an instance or snapshot
    assert list_replica_snapshots(holder, UID) == [second.snapshot, third.snapshot]
    assert replica_uids(holder) == [UID] and len(_sent(source)) <= 3
    assert holder.list_instances() == [] and source.list_instances() == ["c1"]
    assert source.list_snapshots("c1") == []

    used = promote_replica(holder, UID, None, "c1-failover")
    assert used == third.snapshot
    assert holder.list_instances() == ["c1-failover"]
    assert holder.rootfs_path("c1-failover").is_dir()
    assert tree_state(holder.instance_path("c1-failover")) == states[third.snapshot]
    assert list_replica_snapshots(holder, UID) == [] and replica_uids(holder) == []
    (holder.rootfs_path("c1-failover") / "etc/hostname").write_text("running here\n")
    with pytest.raises(VolumeExists):
        holder.create_from_template("c1-failover", template)


def test_a_cut_stream_leaves_nothing_and_the_previous_snapshot_still_promotes(
        source: StoragePool, holder: StoragePool, template: Path) -> None:
    rootfs = source.create_from_template("c1", template)
    first, _ = asyncio.run(_ship(source, holder, None))
    expected = tree_state(source.instance_path("c1"))
    leftovers = sorted(os.listdir(holder.path / ".tmp"))
    (rootfs / "big").write_bytes(os.urandom(4 << 20))  # several chunks: the sender waits
    with pytest.raises(BadStream, match="cut short"):
        asyncio.run(_ship(source, holder, first.snapshot, cut_after=(3 << 20) // 2))
    assert list_replica_snapshots(holder, UID) == [first.snapshot]
    assert os.listdir(holder.path / "replicas" / UID) == [first.snapshot]
    assert sorted(os.listdir(holder.path / ".tmp")) == leftovers
    assert _sent(source) == [first.snapshot]  # the cancelled send remembers nothing
    with pytest.raises(BadStream):  # cut inside the header
        asyncio.run(_ship(source, holder, first.snapshot, cut_after=6))
    assert promote_replica(holder, UID, None, "c1") == first.snapshot
    assert tree_state(holder.instance_path("c1")) == expected


def test_a_parent_the_source_lacks_gives_a_whole_volume_and_one_the_holder_lacks_is_refused(
        source: StoragePool, holder: StoragePool, template: Path) -> None:
    source.create_from_template("c1", template)
    unknown = new_snapshot_name()
    sent, _ = asyncio.run(_ship(source, holder, unknown))
    assert sent.full and list_replica_snapshots(holder, UID) == [sent.snapshot]
    drop_replicas(holder, UID)
    assert list_replica_snapshots(holder, UID) == [] and replica_uids(holder) == []
    with pytest.raises(ParentNotHeld):
        asyncio.run(_ship(source, holder, sent.snapshot))
    assert list_replica_snapshots(holder, UID) == []
    with pytest.raises(VolumeNotFound):
        promote_replica(holder, UID, None, "c1")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_streams_for_another_instance_snapshot_or_pool_kind_are_refused(
        kind: str, holder: StoragePool) -> None:
    snap = new_snapshot_name()
    other = "btrfs" if kind == "dir" else "dir"
    for header in (Header(kind, "someone-else", None, snap), Header(kind, UID, None, "r1"),
                   Header(other, UID, None, snap)):
        with pytest.raises(BadStream):
            asyncio.run(receive_replica(holder, UID, None, snap, _chunks(
                encode_header(header), encode_end(0))))
    with pytest.raises(BadStream):
        asyncio.run(receive_replica(holder, UID, None, snap, _chunks(b"garbage" * 10)))
    with pytest.raises(StorageError):  # whole by its frames, but no tar or btrfs stream
        asyncio.run(receive_replica(holder, UID, None, snap, _chunks(
            encode_header(Header(kind, UID, None, snap)), encode_end(0))))
    assert list_replica_snapshots(holder, UID) == []
    assert os.listdir(holder.path / "replicas") in ([], [UID])
    assert not os.path.exists(_snap(holder, snap))


def test_ensure_clears_what_a_crash_left_half_received(
        kind: str, holder: StoragePool) -> None:
    snap = new_snapshot_name()
    if isinstance(holder, BtrfsPool):  # a receive cut by a crash: a writable subvolume
        _snap(holder, snap).parent.mkdir(parents=True)
        btrfs_cli.create_subvolume(_snap(holder, snap))
        assert list_replica_snapshots(holder, UID) == [] and replica_uids(holder) == []
    else:  # a dead process's scratch in .tmp
        (holder.path / ".tmp" / "999999999-in-0123abcd" / "volume/rootfs").mkdir(parents=True)
    holder.ensure()
    assert not os.path.lexists(_snap(holder, snap))
    assert os.listdir(holder.path / ".tmp") == []


def test_a_dir_delta_never_deletes_through_a_symlink(tmp_path: Path, template: Path) -> None:
    source, holder = DirPool("s", tmp_path / "s"), DirPool("h", tmp_path / "h")
    source.ensure()
    holder.ensure()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (source.create_from_template("c1", template) / "escape").symlink_to(outside)
    first, _ = asyncio.run(_ship(source, holder, None))
    tar = subprocess.run(["tar", "--no-recursion", "-C", str(source.instance_path("c1")),
                          "-cf", "-", "."], capture_output=True, check=True).stdout
    snap = new_snapshot_name()
    header = Header("dir", UID, first.snapshot, snap, b"frootfs/escape/precious")
    asyncio.run(receive_replica(holder, UID, first.snapshot, snap, _chunks(
        encode_header(header), encode_frame(tar), encode_end(len(tar)))))
    assert (outside / "precious").read_text() == "keep"
    assert list_replica_snapshots(holder, UID) == [first.snapshot, snap]


def _dir_pools(tmp_path: Path) -> tuple[DirPool, DirPool]:
    source, holder = DirPool("s", tmp_path / "s"), DirPool("h", tmp_path / "h")
    source.ensure()
    holder.ensure()
    return source, holder


async def _send_into(chunks: list[bytes], source: StoragePool, parent: str | None,
                     snapshot: str) -> ReplicaSent:
    async def write(data: bytes) -> None:
        chunks.append(data)

    return await send_replica(source, "c1", UID, parent, write, snapshot=snapshot)


def _tar_members(chunks: list[bytes]) -> dict[str, tuple[bytes, bytes]]:
    """The members of the tar in a whole replica stream: {name without "./": (type,
    data of a regular file)}."""
    async def payload() -> bytes:
        reader = StreamReader(_chunks(*chunks))
        await reader.header()
        return b"".join([piece async for piece in reader.payload()])

    members: dict[str, tuple[bytes, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(asyncio.run(payload()))) as tar:
        for info in tar:
            f = tar.extractfile(info) if info.isreg() else None
            data = f.read() if f is not None else b""
            members[info.name.removeprefix("./")] = (info.type, data)
    return members


def _walk_then(monkeypatch: pytest.MonkeyPatch, act: Callable[[], None]) -> None:
    """Make the container ``act`` once a dir source's walk of the volume is over, before
    its tar reads it."""
    walk = manifest.scan

    def walk_then_act(root: Path) -> list[manifest.Entry]:
        entries = walk(root)
        act()
        return entries

    monkeypatch.setattr(manifest, "scan", walk_then_act)


def test_a_dir_send_never_reads_through_a_directory_the_container_swapped_for_a_symlink(
        tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the walk and the tar the container replaces a directory it made with a
    symlink to a host directory holding files of the same names: the stream holds the
    symlink and nothing read through it, and the replica ends as the volume is."""
    source, holder = _dir_pools(tmp_path)
    rootfs = source.create_from_template("c1", template)
    first, _ = asyncio.run(_ship(source, holder, None))
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/shadow").write_text("HOST SECRET\n")
    x = rootfs / "x"
    (x / "etc").mkdir(parents=True)
    (x / "etc/shadow").write_text("the container's\n")

    def swap() -> None:
        shutil.rmtree(x)
        x.symlink_to(host)

    _walk_then(monkeypatch, swap)
    chunks: list[bytes] = []
    asyncio.run(_send_into(chunks, source, first.snapshot, new_snapshot_name()))
    members = _tar_members(chunks)
    assert members["rootfs/x"][0] == tarfile.SYMTYPE
    assert not [n for n in members if n.startswith("rootfs/x/")]
    assert not [n for n, (_, data) in members.items() if b"HOST" in data]

    monkeypatch.undo()
    second, _ = asyncio.run(_ship(source, holder, first.snapshot))
    replica = _snap(holder, second.snapshot)
    assert os.readlink(replica / "rootfs/x") == str(host)
    assert tree_state(replica) == tree_state(source.instance_path("c1"))
    assert (host / "etc/shadow").read_text() == "HOST SECRET\n"


def test_paths_made_between_the_walk_and_the_tar_leave_the_replica_with_the_volume(
        tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What tar finds that the walk did not (odd names too) reaches the holder, and the
    next delta deletes it there once it is gone from the volume: the source remembers
    what tar said it archived, not only what it walked."""
    source, holder = _dir_pools(tmp_path)
    rootfs = source.create_from_template("c1", template)
    first, _ = asyncio.run(_ship(source, holder, None))
    odd = [b"nl\nx", b"back\\slash", b"caf\xc3\xa9", b"\xff raw", b"trailing ", b"\x01ctl",
           b"tab\tq?\"*[x]", b"-> arrow"]

    def make() -> None:
        (rootfs / "late").mkdir()
        (rootfs / "late/inner").write_text("late\n")
        (rootfs / "late.lnk").symlink_to("late")
        for name in odd:
            with open(os.path.join(os.fsencode(rootfs / "tmp"), name), "wb") as f:
                f.write(name)

    _walk_then(monkeypatch, make)
    second, _ = asyncio.run(_ship(source, holder, first.snapshot))
    monkeypatch.undo()
    replica = _snap(holder, second.snapshot) / "rootfs"
    assert (replica / "late/inner").read_text() == "late\n"
    assert sorted(os.listdir(os.fsencode(replica / "tmp"))) == sorted(odd)
    shutil.rmtree(rootfs / "late")
    (rootfs / "late.lnk").unlink()
    for name in odd:
        os.unlink(os.path.join(os.fsencode(rootfs / "tmp"), name))
    third, _ = asyncio.run(_ship(source, holder, second.snapshot))
    assert tree_state(_snap(holder, third.snapshot)) == tree_state(source.instance_path("c1"))


def _write_only_attribute() -> Path | None:
    """A sysfs file that even root cannot open for reading (a write-only attribute), of
    a size tar would read."""
    for path in [Path("/sys/bus/pci/rescan"), *sorted(Path("/sys/bus").glob("*/uevent"))]:
        try:
            with open(path, "rb"):
                continue
        except PermissionError:
            return path
        except OSError:
            continue
    return None


def test_a_file_tar_cannot_read_fails_the_send_and_the_holder_keeps_nothing(
        tmp_path: Path, template: Path) -> None:
    attribute = _write_only_attribute()
    if attribute is None:
        pytest.skip("no write-only sysfs attribute to make an unreadable file of")
    source, holder = _dir_pools(tmp_path)
    rootfs = source.create_from_template("c1", template)
    first, _ = asyncio.run(_ship(source, holder, None))
    unreadable = rootfs / "etc/unreadable"
    unreadable.touch()
    subprocess.run(["mount", "--bind", str(attribute), str(unreadable)], check=True)
    try:
        for parent in (first.snapshot, None):
            chunks: list[bytes] = []
            snap = new_snapshot_name()
            with pytest.raises(StorageError, match="unreadable: .*Permission denied"):
                asyncio.run(_send_into(chunks, source, parent, snap))
            with pytest.raises(BadStream, match="cut short"):
                asyncio.run(receive_replica(holder, UID, parent, snap, _chunks(*chunks)))
            assert list_replica_snapshots(holder, UID) == [first.snapshot]
            assert _sent(source) == [first.snapshot]
    finally:
        subprocess.run(["umount", str(unreadable)], check=True)
    second, _ = asyncio.run(_ship(source, holder, first.snapshot))  # the next round
    assert tree_state(_snap(holder, second.snapshot)) == tree_state(source.instance_path("c1"))
