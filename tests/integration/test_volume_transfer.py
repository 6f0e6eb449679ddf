"""A volume crosses from one pool to another as a tar stream, owners and all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node_agent.storage.baseline import (
    CLOCK_SLACK,
    Baseline,
    moment,
    read_baseline,
    write_baseline,
)
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError, VolumeExists
from node_agent.storage.transfer import (
    precopy_dir,
    precopy_volume,
    receive_volume,
    send_volume,
    start_precopy,
    volume_listing,
)
from node_agent.storage.vm_volumes import VmVolumes

pytestmark = pytest.mark.real  # root: chown to shifted ids, device nodes


def _make_volume(pool: DirPool, name: str) -> None:
    rootfs = pool.rootfs_path(name)
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("c1\n")
    os.chown(rootfs / "etc" / "hostname", 1_000_000, 1_000_005)
    os.chmod(rootfs / "etc" / "hostname", 0o640)
    os.symlink("hostname", rootfs / "etc" / "name")
    os.link(rootfs / "etc" / "hostname", rootfs / "etc" / "hard")
    os.mknod(rootfs / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(rootfs / "etc" / "hostname", "trusted.corral", b"kept")
    snap = pool.snapshot_path(name, "snap0") / "rootfs"
    snap.mkdir(parents=True)
    (snap / "old").write_text("before\n")


def _tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        detail = os.readlink(path) if path.is_symlink() else (
            path.read_text() if stat.S_ISREG(st.st_mode) else "")
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, detail)
    return out


async def _pipe(pool: DirPool | VmVolumes, name: str, cut_after: int | None = None,
                newer: float | None = None) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def write(chunk: bytes) -> None:
        await queue.put(chunk)

    async def produce() -> None:
        await send_volume(pool, name, write, newer)
        await queue.put(None)

    task = asyncio.create_task(produce())
    sent = 0
    while (chunk := await queue.get()) is not None:
        if cut_after is not None and sent + len(chunk) > cut_after:
            task.cancel()  # the sender dies mid-stream
            with contextlib.suppress(asyncio.CancelledError):
                await task
            yield chunk[: cut_after - sent]
            return
        sent += len(chunk)
        yield chunk
    await task


def test_volume_and_snapshots_arrive_identical(tmp_path: Path) -> None:
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    source.ensure()
    target.ensure()
    _make_volume(source, "c1")
    seen: list[int] = []
    received = asyncio.run(receive_volume(target, "c1", _pipe(source, "c1"), seen.append))
    assert received > 0 and seen[-1] == received
    assert _tree(target.instance_path("c1")) == _tree(source.instance_path("c1"))
    assert _tree(target.snapshots_path("c1")) == _tree(source.snapshots_path("c1"))
    hostname = target.rootfs_path("c1") / "etc" / "hostname"
    assert os.getxattr(hostname, "trusted.corral") == b"kept"
    assert os.stat(hostname).st_ino == os.stat(hostname.with_name("hard")).st_ino
    with pytest.raises(VolumeExists):  # never over an existing volume
        asyncio.run(receive_volume(target, "c1", _pipe(source, "c1")))
    assert list((tmp_path / "b" / ".tmp").iterdir()) == []


def test_a_cut_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    source.ensure()
    target.ensure()
    _make_volume(source, "c1")
    (source.rootfs_path("c1") / "big").write_bytes(os.urandom(3 << 20))
    with pytest.raises(StorageError):
        asyncio.run(receive_volume(target, "c1", _pipe(source, "c1", cut_after=1 << 20)))
    assert not target.exists("c1") and not target.snapshots_path("c1").exists()
    assert list((tmp_path / "b" / ".tmp").iterdir()) == []


def test_a_delta_on_a_precopy_gives_the_volume_as_it_is_at_the_end(tmp_path: Path) -> None:
    """What a move of a running container does: a pre-copy while it runs, then only what
    changed since (data, metadata, new files and kinds) and the removal of what went."""
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    source.ensure()
    target.ensure()
    _make_volume(source, "c1")
    rootfs = source.rootfs_path("c1")
    (rootfs / "gone").mkdir()
    (rootfs / "gone" / "file").write_text("x")
    (rootfs / "was-file").write_text("x")
    (rootfs / "kept-big").write_text("k" * (1 << 20))
    (rootfs / "rewritten").write_text("old")
    began = time.time() - 1.0
    start_precopy(target, "uid1")
    asyncio.run(precopy_volume(target, "uid1", _pipe(source, "c1")))
    assert (precopy_dir(target, "uid1") / "containers" / "c1" / "rootfs" / "kept-big").is_file()
    assert not target.exists("c1")  # a pre-copy is no volume yet

    time.sleep(0.01)
    shutil.rmtree(rootfs / "gone")
    (rootfs / "was-file").unlink()
    (rootfs / "was-file").mkdir()
    (rootfs / "rewritten").write_text("new")
    os.chmod(rootfs / "etc" / "hostname", 0o600)  # metadata only: its ctime changes
    (rootfs.parent / "state").mkdir()
    (rootfs.parent / "state" / "inventory.img").write_bytes(b"ckpt")
    sent: list[int] = []

    async def delta() -> AsyncIterator[bytes]:
        async for chunk in _pipe(source, "c1", newer=began + 1.0):
            sent.append(len(chunk))
            yield chunk

    listing = volume_listing(source, "c1")
    asyncio.run(receive_volume(target, "c1", delta(), precopied=("uid1", listing)))
    assert _tree(target.instance_path("c1")) == _tree(source.instance_path("c1"))
    assert _tree(target.snapshots_path("c1")) == _tree(source.snapshots_path("c1"))
    assert sum(sent) < 1 << 20  # the unchanged megabyte was not sent again
    assert not precopy_dir(target, "uid1").exists()
    assert list((tmp_path / "b" / ".tmp").iterdir()) == []


def test_a_precopy_on_a_spare_of_the_image_sends_only_what_the_container_changed(
        tmp_path: Path) -> None:
    """A volume made from a spare keeps the spare's ctimes where it is unchanged; the
    target starts from a spare of its own and receives only what is newer than the
    volume's baseline."""
    template = tmp_path / "image" / "rootfs"
    (template / "bin").mkdir(parents=True)
    (template / "bin" / "big").write_text("b" * (1 << 20))
    (template / "bin" / "gone").write_text("x")
    os.symlink("big", template / "bin" / "link")
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    for pool in (source, target):
        pool.ensure()
        pool.prepare_spare(template)
    time.sleep(CLOCK_SLACK + 0.1)  # the spares are older than the volume's baseline
    made = moment()
    source.create_from_template("c1", template)
    write_baseline(source.instance_path("c1"), Baseline("fp", "1000000", made))
    rootfs = source.rootfs_path("c1")
    (rootfs / "bin" / "gone").unlink()
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "hostname").write_text("c1\n")

    precopy = start_precopy(target, "uid1")
    (precopy / "containers").mkdir()
    assert target.take_spare(template, precopy / "containers" / "c1")
    baseline = read_baseline(source.instance_path("c1"))
    assert baseline is not None and baseline.matches("fp", "1000000")
    sent: list[int] = []

    async def since_baseline() -> AsyncIterator[bytes]:
        async for chunk in _pipe(source, "c1", newer=baseline.since):
            sent.append(len(chunk))
            yield chunk

    began = moment()
    asyncio.run(precopy_volume(target, "uid1", since_baseline(), volume_listing(source, "c1")))
    assert sum(sent) < 1 << 20  # the image's megabyte came from the spare
    asyncio.run(receive_volume(target, "c1", _pipe(source, "c1", newer=began),
                               precopied=("uid1", volume_listing(source, "c1"))))
    assert _tree(target.instance_path("c1")) == _tree(source.instance_path("c1"))


def _make_vm_volume(pool: DirPool, name: str) -> VmVolumes:
    volume = pool.vm_volume_path(name)
    volume.mkdir()
    (volume / "root.qcow2").write_text("disk" * (1 << 20))  # the transfer reads no header
    (volume / "snapshots.json").write_text('{"version": 1, "snapshots": {}}\n')
    return VmVolumes(pool)


def test_a_vm_volume_arrives_in_the_target_pool_alone(tmp_path: Path) -> None:
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    source.ensure()
    target.ensure()
    sent = _make_vm_volume(source, "v1")
    (tmp_path / "a" / "vms-runtime-stand-in").mkdir()  # nothing outside the volume goes
    received = VmVolumes(target)
    asyncio.run(receive_volume(received, "v1", _pipe(sent, "v1")))
    assert received.exists("v1")
    assert _tree(target.vm_volume_path("v1")) == _tree(source.vm_volume_path("v1"))
    assert sorted(p.name for p in target.path.iterdir()) == [
        ".spares", ".tmp", "containers", "containers-snapshots", "replicas", "replication",
        "virtual-machines"]
    with pytest.raises(VolumeExists):
        asyncio.run(receive_volume(received, "v1", _pipe(sent, "v1")))
    assert list((tmp_path / "b" / ".tmp").iterdir()) == []
    received.delete("v1")
    assert not target.vm_volume_path("v1").exists()


def test_a_cut_vm_volume_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    source.ensure()
    target.ensure()
    sent, received = _make_vm_volume(source, "v1"), VmVolumes(target)
    with pytest.raises(StorageError):
        asyncio.run(receive_volume(received, "v1", _pipe(sent, "v1", cut_after=1 << 20)))
    assert not received.exists("v1") and not target.vm_volume_path("v1").exists()
    assert list((tmp_path / "b" / ".tmp").iterdir()) == []
