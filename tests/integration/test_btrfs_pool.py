"""The btrfs pool on real loop-mounted btrfs, as root: subvolumes, CoW clones, snapshots,
and send/receive between two pools."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.storage import btrfs_cli
from node_agent.storage.btrfs import BtrfsPool
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound
from tests.integration.test_dir_pool import make_template, tree_state

pytestmark = pytest.mark.real


@pytest.fixture(autouse=True)
def _needs_root_and_btrfs() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount, chown to mapped uids)")
    problem = btrfs_cli.problem()
    if problem:
        pytest.skip(problem)


def _open(base: Path, name: str) -> Iterator[BtrfsPool]:
    pool = BtrfsPool(name, base / "storage-pools" / name, {"size": "512MiB"}, base / "disks")
    try:
        pool.ensure()
        yield pool
    finally:
        if btrfs_cli.mount_source(pool.path) is not None:
            btrfs_cli.unmount(pool.path)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[BtrfsPool]:
    yield from _open(tmp_path, "p1")


@pytest.fixture
def other(tmp_path: Path) -> Iterator[BtrfsPool]:
    yield from _open(tmp_path, "p2")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    return make_template(tmp_path / "template")


def _loop_of(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                          check=True).stdout


def test_ensure_makes_a_sparse_loop_file_and_mounts_it_once(pool: BtrfsPool,
                                                            tmp_path: Path) -> None:
    image = tmp_path / "disks" / "p1.img"
    assert pool.loop_file == image and image.stat().st_size == 512 << 20
    assert image.stat().st_blocks * 512 < 512 << 20  # sparse
    assert btrfs_cli.is_btrfs(pool.path) and btrfs_cli.mount_source(pool.path)
    for sub in ("", "containers", "containers-snapshots", "virtual-machines"):
        assert stat.S_IMODE((pool.path / sub).stat().st_mode) == 0o711
    pool.ensure()  # a daemon restart: the mount is kept, not stacked
    mounts = Path("/proc/self/mountinfo").read_text().split("\n")
    assert sum(f" {pool.path} " in line for line in mounts) == 1
    assert _loop_of(image).count("\n") == 1
    pool.unmount()
    assert btrfs_cli.mount_source(pool.path) is None and _loop_of(image) == ""
    pool.ensure()  # mounted again, the same filesystem
    assert btrfs_cli.mount_source(pool.path) is not None


def test_create_is_a_snapshot_of_the_template_imported_once(pool: BtrfsPool,
                                                            template: Path) -> None:
    rootfs = pool.create_from_template("c1", template)
    assert rootfs == pool.rootfs_path("c1") == pool.path / "containers/c1/rootfs"
    assert tree_state(rootfs) == tree_state(template)  # owners, modes, links, xattrs
    assert btrfs_cli.is_subvolume(pool.instance_path("c1"))
    assert stat.S_IMODE(pool.instance_path("c1").stat().st_mode) == 0o711
    assert pool.spare_count(template) == 1 and not pool.take_spare(template, Path("/x"))
    started = time.monotonic()
    pool.create_from_template("c2", template)
    assert time.monotonic() - started < 2.0
    show = btrfs_cli.run(["btrfs", "subvolume", "show", str(pool.instance_path("c2"))], "show")
    image = next((pool.path / "images").iterdir())
    image_uuid = btrfs_cli.run(["btrfs", "subvolume", "show", str(image)], "show")
    parent = next(line.split()[-1] for line in show.splitlines() if "Parent UUID" in line)
    assert "UUID:" in image_uuid and parent in image_uuid  # a snapshot of the template
    assert pool.list_instances() == ["c1", "c2"]
    with pytest.raises(VolumeExists):
        pool.create_from_template("c1", template)
    assert os.listdir(pool.path / ".tmp") == []


def test_snapshot_restore_rename_and_delete(pool: BtrfsPool, template: Path) -> None:
    rootfs = pool.create_from_template("c1", template)
    pool.snapshot("c1", "snap0")
    before = tree_state(rootfs)
    assert btrfs_cli.is_readonly(pool.snapshot_path("c1", "snap0"))
    (rootfs / "etc/hostname").write_text("changed\n")
    (rootfs / "new-file").write_text("x")
    pool.restore("c1", "snap0")
    assert tree_state(pool.rootfs_path("c1")) == before
    assert not btrfs_cli.is_readonly(pool.instance_path("c1"))
    (pool.rootfs_path("c1") / "writable").write_text("yes")
    pool.rename_snapshot("c1", "snap0", "first")
    assert pool.list_snapshots("c1") == ["first"]
    pool.rename("c1", "c9")
    assert pool.list_instances() == ["c9"] and pool.list_snapshots("c9") == ["first"]
    with pytest.raises(VolumeNotFound):
        pool.restore("c9", "snap0")
    pool.delete_snapshot("c9", "first")
    assert pool.list_snapshots("c9") == []
    pool.snapshot("c9", "again")
    pool.delete("c9")
    assert not pool.exists("c9") and not pool.snapshots_path("c9").exists()
    assert os.listdir(pool.path / ".tmp") == []


def test_delete_removes_nested_subvolumes(pool: BtrfsPool, template: Path) -> None:
    rootfs = pool.create_from_template("c1", template)
    btrfs_cli.create_subvolume(rootfs / "var/nested")
    btrfs_cli.create_subvolume(rootfs / "var/nested/deeper")
    pool.delete("c1")
    assert not pool.exists("c1")
    listing = btrfs_cli.run(["btrfs", "subvolume", "list", str(pool.path)], "list")
    assert "nested" not in listing and "containers/c1" not in listing


def test_adopt_turns_an_unpacked_tar_into_subvolumes(pool: BtrfsPool, template: Path) -> None:
    scratch = pool.incoming_scratch()
    subprocess.run(["cp", "-a", str(template), str(scratch / "rootfs")], check=True)
    (scratch / "containers").mkdir()
    (scratch / "containers/c1").mkdir()
    os.rename(scratch / "rootfs", scratch / "containers/c1/rootfs")
    (scratch / "containers-snapshots/c1").mkdir(parents=True)
    subprocess.run(["cp", "-a", str(scratch / "containers/c1"),
                    str(scratch / "containers-snapshots/c1/s0")], check=True)
    pool.adopt("c1", scratch)
    pool.discard_scratch(scratch)
    assert tree_state(pool.rootfs_path("c1")) == tree_state(template)
    assert btrfs_cli.is_subvolume(pool.instance_path("c1"))
    assert btrfs_cli.is_readonly(pool.snapshot_path("c1", "s0"))
    pool.restore("c1", "s0")
    assert os.listdir(pool.path / ".tmp") == []


UID = "6f1c0d2e-replica-uid"


def _send(pool: BtrfsPool, name: str, parent: str | None) -> tuple[str, Path]:
    out = Path(tempfile.mkstemp(prefix="send-", dir=pool.path.parent.parent)[1])
    with open(out, "wb") as stream:
        snap = pool.send(name, parent, stream)
    return snap, out


def _receive(pool: BtrfsPool, uid: str, stream_file: Path) -> str:
    with open(stream_file, "rb") as stream:
        return pool.receive(uid, stream)


def test_full_then_incremental_send_reproduces_the_volume(pool: BtrfsPool, other: BtrfsPool,
                                                          template: Path) -> None:
    rootfs = pool.create_from_template("c1", template)
    (rootfs / "big").write_bytes(os.urandom(4 << 20))
    first, full = _send(pool, "c1", None)
    assert _receive(other, UID, full) == first
    replica = other.replicas_path(UID) / first
    assert tree_state(replica / "rootfs") == tree_state(rootfs)
    (rootfs / "etc/hostname").write_text("changed on the source\n")
    (rootfs / "bin/cat").unlink()
    second, delta = _send(pool, "c1", first)
    assert delta.stat().st_size * 20 < full.stat().st_size, (delta.stat(), full.stat())
    assert _receive(other, UID, delta) == second
    assert other.list_replicas(UID) == [first, second]
    assert pool.list_replication_snapshots("c1") == [first, second]
    assert tree_state(other.replicas_path(UID) / second / "rootfs") == tree_state(rootfs)
    promoted = other.promote_replica(UID, second, "c7")
    assert tree_state(promoted) == tree_state(rootfs)
    (promoted / "writable").write_text("yes")
    assert other.list_instances() == ["c7"] and other.replica_uids() == [UID]
    with pytest.raises(VolumeExists):
        other.promote_replica(UID, first, "c7")
    pool.drop_replication_snapshot("c1", first)
    other.drop_replica(UID, first)
    assert other.list_replicas(UID) == [second]
    other.drop_replicas(UID)
    assert other.list_replicas(UID) == [] and other.replica_uids() == []


def test_a_cut_or_orphan_stream_leaves_nothing_behind(pool: BtrfsPool, other: BtrfsPool,
                                                      template: Path) -> None:
    rootfs = pool.create_from_template("c1", template)
    (rootfs / "big").write_bytes(os.urandom(1 << 20))
    first, full = _send(pool, "c1", None)
    with open(full, "r+b") as stream:
        stream.truncate(full.stat().st_size // 2)
    with pytest.raises(StorageError, match="receiv"):
        _receive(other, UID, full)
    assert other.list_replicas(UID) == []
    (rootfs / "more").write_text("x")
    _, delta = _send(pool, "c1", first)
    with pytest.raises(StorageError):  # its parent was never received here
        _receive(other, UID, delta)
    assert other.list_replicas(UID) == []
    with pytest.raises(VolumeNotFound):
        pool.send("c1", "r-unknown", open(os.devnull, "wb"))
