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
    MANIFEST,
    Baseline,
    moment,
    read_baseline,
    read_baseline_manifest,
    write_baseline,
)
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError, VolumeExists
from node_agent.storage.transfer import (
    Basis,
    baseline_basis,
    keep_sent,
    precopy_dir,
    precopy_volume,
    receive_volume,
    send_precopy,
    send_volume,
    start_precopy,
    take_sent,
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
    """Every path's mode, owners and content, but a volume's own spare manifest (each
    member keeps its own: ``transfer.is_private``)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path == root / MANIFEST:
            continue
        st = os.lstat(path)
        detail = os.readlink(path) if path.is_symlink() else (
            path.read_text() if stat.S_ISREG(st.st_mode) else "")
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, detail)
    return out


async def _pipe(pool: DirPool | VmVolumes, name: str, cut_after: int | None = None,
                basis: Basis | None = None, precopy: list[Basis] | None = None,
                ) -> AsyncIterator[bytes]:
    """The volume's stream: whole, or what ``basis`` lacks; with ``precopy`` a pre-copy
    of the running volume, whose Basis for the delta is appended there."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def write(chunk: bytes) -> None:
        await queue.put(chunk)

    async def produce() -> None:
        if precopy is None:
            await send_volume(pool, name, write, basis)
        else:
            _, kept = await send_precopy(pool, name, write, moment(), basis)
            precopy.append(kept)
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
    time.sleep(2 * CLOCK_SLACK + 0.1)  # older than the pre-copy and its slack
    start_precopy(target, "uid1")
    kept: list[Basis] = []
    asyncio.run(precopy_volume(target, "uid1", _pipe(source, "c1", precopy=kept)))
    keep_sent(source, "uid1", kept[0])  # what the source member keeps for the delta
    basis = take_sent(source, "uid1", kept[0].moment_ns / 1e9)
    assert basis == kept[0] and take_sent(source, "uid1", kept[0].moment_ns / 1e9) is None
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
        async for chunk in _pipe(source, "c1", basis=basis):
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
    time.sleep(2 * CLOCK_SLACK + 0.1)  # the spares are older than the baseline and slack
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
    own = (precopy / "containers" / "c1" / MANIFEST).read_bytes()
    baseline = read_baseline(source.instance_path("c1"))
    assert baseline is not None and baseline.matches("fp", "1000000")
    sent: list[int] = []
    kept: list[Basis] = []

    async def since_baseline() -> AsyncIterator[bytes]:
        spare = baseline_basis(source, "c1", baseline.since)
        assert spare is not None
        async for chunk in _pipe(source, "c1", basis=spare, precopy=kept):
            sent.append(len(chunk))
            yield chunk

    asyncio.run(precopy_volume(target, "uid1", since_baseline(), volume_listing(source, "c1")))
    assert sum(sent) < 1 << 20  # the image's megabyte came from the spare
    asyncio.run(receive_volume(target, "c1", _pipe(source, "c1", basis=kept[0]),
                               precopied=("uid1", volume_listing(source, "c1"))))
    assert _tree(target.instance_path("c1")) == _tree(source.instance_path("c1"))
    # The target keeps its own spare's manifest (its inodes), not the source's.
    assert (target.instance_path("c1") / MANIFEST).read_bytes() == own
    assert own != (source.instance_path("c1") / MANIFEST).read_bytes()
    assert read_baseline_manifest(target.instance_path("c1")) is not None


def _moves_and_replacements(rootfs: Path) -> None:
    """Directories and files that exist before a pre-copy, for ``_move_and_replace``."""
    (rootfs / "d1" / "sub" / "deeper").mkdir(parents=True)
    (rootfs / "d1" / "a").write_text("a\n")
    (rootfs / "d1" / "sub" / "b").write_text("b\n")
    (rootfs / "d1" / "sub" / "deeper" / "c").write_text("c" * 5000)
    os.symlink("../a", rootfs / "d1" / "sub" / "to-a")
    (rootfs / "was-file").write_text("x")
    (rootfs / "elsewhere" / "inner").mkdir(parents=True)
    (rootfs / "elsewhere" / "inner" / "f").write_text("moved in\n")
    (rootfs / "swap").mkdir()
    (rootfs / "swap" / "f").write_text("old\n")
    (rootfs / "swap.new").mkdir()
    (rootfs / "swap.new" / "f").write_text("new\n")


def _move_and_replace(rootfs: Path) -> None:
    """What ``tar --newer`` misses: the files of a moved directory keep their ctimes."""
    os.rename(rootfs / "d1", rootfs / "d2")  # mv d1 d2: its files, nested ones too
    (rootfs / "was-file").unlink()  # a file replaced by a directory moved in
    os.rename(rootfs / "elsewhere", rootfs / "was-file")
    shutil.rmtree(rootfs / "swap")  # a directory replaced by another of the same names
    os.rename(rootfs / "swap.new", rootfs / "swap")


def test_a_delta_carries_the_files_of_directories_moved_since_the_precopy(
        tmp_path: Path) -> None:
    """The files below a directory moved (or put in place of a file) between the
    pre-copy and the delta arrive, though their ctimes are older than the pre-copy."""
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    source.ensure()
    target.ensure()
    _make_volume(source, "c1")
    rootfs = source.rootfs_path("c1")
    _moves_and_replacements(rootfs)
    time.sleep(2 * CLOCK_SLACK + 0.1)  # older than the pre-copy and any slack
    start_precopy(target, "uid1")
    kept: list[Basis] = []
    asyncio.run(precopy_volume(target, "uid1", _pipe(source, "c1", precopy=kept)))
    _move_and_replace(rootfs)
    listing = volume_listing(source, "c1")
    asyncio.run(receive_volume(target, "c1", _pipe(source, "c1", basis=kept[0]),
                               precopied=("uid1", listing)))
    assert (target.rootfs_path("c1") / "d2" / "sub" / "deeper" / "c").read_text() == "c" * 5000
    assert (target.rootfs_path("c1") / "was-file" / "inner" / "f").read_text() == "moved in\n"
    assert (target.rootfs_path("c1") / "swap" / "f").read_text() == "new\n"
    assert _tree(target.instance_path("c1")) == _tree(source.instance_path("c1"))


def test_a_precopy_on_a_spare_carries_the_image_directories_the_container_moved(
        tmp_path: Path) -> None:
    """A directory of the image moved in the container keeps the spare's ctimes below
    it: the target's spare has its files under the old path only."""
    template = tmp_path / "image" / "rootfs"
    _moves_and_replacements(template)
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    for pool in (source, target):
        pool.ensure()
        pool.prepare_spare(template)
    time.sleep(2 * CLOCK_SLACK + 0.1)  # the spares are older than the baseline and slack
    made = moment()
    source.create_from_template("c1", template)
    write_baseline(source.instance_path("c1"), Baseline("fp", "1000000", made))
    rootfs = source.rootfs_path("c1")
    _move_and_replace(rootfs)

    precopy = start_precopy(target, "uid1")
    (precopy / "containers").mkdir()
    assert target.take_spare(template, precopy / "containers" / "c1")
    spare = baseline_basis(source, "c1", made)
    assert spare is not None
    kept: list[Basis] = []
    asyncio.run(precopy_volume(target, "uid1", _pipe(source, "c1", basis=spare, precopy=kept),
                               volume_listing(source, "c1")))
    asyncio.run(receive_volume(target, "c1", _pipe(source, "c1", basis=kept[0]),
                               precopied=("uid1", volume_listing(source, "c1"))))
    assert (target.rootfs_path("c1") / "d2" / "sub" / "deeper" / "c").read_text() == "c" * 5000
    assert (target.rootfs_path("c1") / "was-file" / "inner" / "f").read_text() == "moved in\n"
    assert _tree(target.instance_path("c1")) == _tree(source.instance_path("c1"))


def test_a_precopy_of_a_volume_changing_under_it_reads_nothing_outside_and_ends_equal(
        tmp_path: Path) -> None:
    """While tar reads the running container's volume, a directory moves and another
    is replaced by a symlink to a host directory, then put back: the pre-copy never
    reads through the symlink, and the delta brings what the pre-copy missed."""
    source, target = DirPool("a", tmp_path / "a"), DirPool("b", tmp_path / "b")
    source.ensure()
    target.ensure()
    _make_volume(source, "c1")
    rootfs = source.rootfs_path("c1")
    for i in range(20):
        (rootfs / f"q{i:02}").mkdir()
    # tar reads a directory in the order of its entries: the big file holds it up in
    # the first of them while the last one changes.
    order = [n for n in os.listdir(rootfs) if n.startswith("q")]
    (rootfs / order[0] / "big").write_bytes(b"z" * (8 << 20))
    v = rootfs / order[-1]
    (v / "d1" / "deeper").mkdir(parents=True)
    (v / "s").mkdir()
    (v / "d1" / "x").write_text("x\n")
    (v / "d1" / "deeper" / "y").write_text("y\n")
    (v / "s" / "secret").write_text("the container's\n")
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("HOST\n")
    time.sleep(2 * CLOCK_SLACK + 0.1)
    changed: list[bool] = []

    async def precopy_stream(kept: list[Basis]) -> AsyncIterator[bytes]:
        async for chunk in _pipe(source, "c1", precopy=kept):
            if not changed:  # tar waits on the pipe meanwhile
                changed.append(True)
                os.rename(v / "d1", v / "d2")
                os.rename(v / "s", v / "s.real")
                os.symlink(host, v / "s")
            yield chunk

    start_precopy(target, "uid1")
    kept: list[Basis] = []
    asyncio.run(precopy_volume(target, "uid1", precopy_stream(kept)))
    copied = precopy_dir(target, "uid1") / v.relative_to(source.path)
    assert sorted(p.name for p in copied.iterdir()) == ["d2", "s", "s.real"]  # read changed
    assert (copied / "s").is_symlink()  # archived as the link it is, never followed
    assert not any(p.is_file() and not p.is_symlink() and p.read_bytes() == b"HOST\n"
                   for p in precopy_dir(target, "uid1").rglob("*"))
    (v / "s").unlink()  # the directory is put back
    os.rename(v / "s.real", v / "s")
    asyncio.run(receive_volume(target, "c1", _pipe(source, "c1", basis=kept[0]),
                               precopied=("uid1", volume_listing(source, "c1"))))
    assert (target.rootfs_path("c1") / order[-1] / "d2" / "deeper" / "y").read_text() == "y\n"
    assert (target.rootfs_path("c1") / order[-1] / "s" / "secret").read_text() == \
        "the container's\n"
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
