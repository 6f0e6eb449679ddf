"""The dir pool on a real filesystem, as root: owners, links and xattrs survive every copy."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound
from node_agent.storage.topdir import spread_subdirectories, spreads_subdirectories

pytestmark = pytest.mark.real
ROOT = 1000000  # the mapped root of an unprivileged container


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown to mapped uids)")


def make_template(base: Path) -> Path:
    """A small rootfs with what a real image has: mapped owners, links, odd modes, xattrs."""
    rootfs = base / "rootfs"
    for sub in ("bin", "etc", "usr/share", "tmp", "var/empty"):
        (rootfs / sub).mkdir(parents=True)
    (rootfs / "bin/busybox").write_bytes(b"\x7fELF" + os.urandom(4096))
    (rootfs / "bin/busybox").chmod(0o4755)
    for applet in ("sh", "ls", "cat"):
        (rootfs / "bin" / applet).symlink_to("/bin/busybox")
    (rootfs / "etc/hostname").write_text("template\n")
    (rootfs / "etc/shadow").write_text("root:*:0:0:::::\n")
    (rootfs / "etc/shadow").chmod(0o640)
    os.link(rootfs / "etc/hostname", rootfs / "usr/share/hostname.hard")
    (rootfs / "usr/share/relative").symlink_to("../../etc/hostname")
    (rootfs / "usr/share/dangling").symlink_to("/nonexistent/target")
    os.mkfifo(rootfs / "usr/share/fifo")
    (rootfs / "tmp").chmod(0o1777)
    os.setxattr(rootfs / "etc/hostname", "user.corral", b"kept")
    for path in [rootfs, *rootfs.rglob("*")]:
        os.chown(path, ROOT, ROOT, follow_symlinks=False)
    os.chown(rootfs / "etc/shadow", ROOT, ROOT + 42)
    return rootfs


def tree_state(root: Path) -> dict[str, Any]:
    """What a faithful copy must preserve, per relative path."""
    state: dict[str, Any] = {}
    inodes: dict[int, str] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        rel = str(path.relative_to(root))
        entry: dict[str, Any] = {"mode": st.st_mode, "owner": (st.st_uid, st.st_gid)}
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            entry["data"] = path.read_bytes()
            entry["xattrs"] = {k: os.getxattr(path, k) for k in os.listxattr(path)}
            entry["hardlink_of"] = inodes.setdefault(st.st_ino, rel)
        if not stat.S_ISLNK(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            entry["mtime"] = st.st_mtime_ns
        state[rel] = entry
    return state


@pytest.fixture
def template(tmp_path: Path) -> Path:
    return make_template(tmp_path / "template")


@pytest.fixture
def pool(tmp_path: Path) -> DirPool:
    pool = DirPool("default", tmp_path / "pool")
    pool.ensure()
    return pool


def test_ensure_makes_an_lxd_layout_traversable_by_mapped_roots(pool: DirPool) -> None:
    for sub in ("", "containers", "containers-snapshots", "virtual-machines"):
        assert stat.S_IMODE((pool.path / sub).stat().st_mode) == 0o711


def test_create_copies_owners_modes_links_and_xattrs(pool: DirPool, template: Path) -> None:
    rootfs = pool.create_from_template("c1", template)
    assert rootfs == pool.path / "containers/c1/rootfs" == pool.rootfs_path("c1")
    assert tree_state(rootfs) == tree_state(template)
    assert stat.S_IMODE(pool.instance_path("c1").stat().st_mode) == 0o711
    assert (rootfs / "etc/hostname").stat().st_ino != (template / "etc/hostname").stat().st_ino
    assert pool.exists("c1") and pool.list_instances() == ["c1"]
    assert os.listdir(pool.path / ".tmp") == []


def test_create_over_an_existing_volume_is_refused_and_changes_nothing(
        pool: DirPool, template: Path) -> None:
    pool.create_from_template("c1", template)
    (pool.rootfs_path("c1") / "mine").write_text("keep")
    with pytest.raises(VolumeExists):
        pool.create_from_template("c1", template)
    assert (pool.rootfs_path("c1") / "mine").read_text() == "keep"


def test_snapshot_then_restore_brings_back_the_snapshot_exactly(
        pool: DirPool, template: Path) -> None:
    rootfs = pool.create_from_template("c1", template)
    pool.snapshot("c1", "snap0")
    before = tree_state(rootfs)
    (rootfs / "etc/hostname").write_text("changed\n")
    (rootfs / "bin/sh").unlink()
    (rootfs / "new-file").write_text("x")
    os.chown(rootfs / "etc", 0, 0)
    pool.snapshot("c1", "snap1")
    assert pool.list_snapshots("c1") == ["snap0", "snap1"]
    pool.restore("c1", "snap0")
    assert tree_state(pool.rootfs_path("c1")) == before
    assert tree_state(pool.snapshot_path("c1", "snap0") / "rootfs") == before
    assert (pool.snapshot_path("c1", "snap1") / "rootfs/new-file").exists()
    assert os.listdir(pool.path / ".tmp") == []
    with pytest.raises(VolumeExists):
        pool.snapshot("c1", "snap0")
    with pytest.raises(VolumeNotFound):
        pool.restore("c1", "nope")


def test_snapshots_are_renamed_and_deleted_one_by_one(pool: DirPool, template: Path) -> None:
    pool.create_from_template("c1", template)
    pool.snapshot("c1", "a")
    pool.snapshot("c1", "b")
    pool.rename_snapshot("c1", "a", "c")
    assert pool.list_snapshots("c1") == ["b", "c"]
    with pytest.raises(VolumeExists):
        pool.rename_snapshot("c1", "b", "c")
    pool.delete_snapshot("c1", "b")
    assert pool.list_snapshots("c1") == ["c"]
    with pytest.raises(VolumeNotFound):
        pool.delete_snapshot("c1", "b")


def test_rename_moves_the_volume_and_its_snapshots(pool: DirPool, template: Path) -> None:
    pool.create_from_template("c1", template)
    pool.snapshot("c1", "snap0")
    pool.create_from_template("taken", template)
    with pytest.raises(VolumeExists):
        pool.rename("c1", "taken")
    assert pool.list_snapshots("c1") == ["snap0"]
    pool.rename("c1", "c2")
    assert not pool.exists("c1") and pool.list_snapshots("c1") == []
    assert pool.exists("c2") and pool.list_snapshots("c2") == ["snap0"]
    assert tree_state(pool.rootfs_path("c2")) == tree_state(template)
    with pytest.raises(VolumeNotFound):
        pool.rename("c1", "c3")


def test_replication_manifests_follow_a_rename_and_go_with_a_delete(
        pool: DirPool, template: Path) -> None:
    pool.create_from_template("c1", template)
    pool.replication_path("c1").mkdir()
    (pool.replication_path("c1") / "r1").write_text("manifest")
    pool.replication_path("taken").mkdir()
    with pytest.raises(VolumeExists):  # nothing moves when one part cannot
        pool.rename("c1", "taken")
    assert pool.exists("c1") and (pool.replication_path("c1") / "r1").exists()
    pool.rename("c1", "c2")
    assert (pool.replication_path("c2") / "r1").read_text() == "manifest"
    assert not pool.replication_path("c1").exists()
    pool.delete("c2")
    assert not pool.replication_path("c2").exists()


def test_delete_removes_snapshots_and_never_follows_symlinks_out(
        pool: DirPool, template: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("do not delete")
    rootfs = pool.create_from_template("c1", template)
    (rootfs / "escape").symlink_to(outside)
    (rootfs / "var/empty/deep").mkdir()
    (rootfs / "var/empty/deep").chmod(0)
    os.chown(rootfs / "var/empty/deep", ROOT + 7, ROOT + 7)
    pool.snapshot("c1", "snap0")
    pool.delete("c1")
    assert not pool.exists("c1") and pool.list_snapshots("c1") == []
    assert not pool.snapshots_path("c1").exists()
    assert (outside / "precious").read_text() == "do not delete"
    with pytest.raises(VolumeNotFound):
        pool.delete("c1")
    pool.delete("c1", missing_ok=True)
    assert os.listdir(pool.path / ".tmp") == []


@pytest.fixture
def small_pool(tmp_path: Path) -> Iterator[DirPool]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        pool = DirPool("small", mount)
        pool.ensure()
        yield pool
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_copy_that_fails_half_way_leaves_nothing(small_pool: DirPool, template: Path) -> None:
    for i in range(8):  # 8 x 64 KiB cannot fit in 256 KiB: cp fails with ENOSPC part-way
        (template / f"big{i}").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(StorageError) as info:
        small_pool.create_from_template("c1", template)
    assert info.value.code == 500 and "No space left" in str(info.value)
    assert not small_pool.exists("c1") and small_pool.list_instances() == []
    assert os.listdir(small_pool.path / ".tmp") == []


def test_a_missing_template_is_not_found_and_leaves_nothing(pool: DirPool, tmp_path: Path) -> None:
    with pytest.raises(VolumeNotFound):
        pool.create_from_template("c1", tmp_path / "no-such-rootfs")
    assert pool.list_instances() == [] and os.listdir(pool.path / ".tmp") == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".hidden", "x" * 256])
def test_names_that_are_not_one_path_component_are_refused(pool: DirPool, name: str) -> None:
    with pytest.raises(StorageError) as info:
        pool.instance_path(name)
    assert info.value.code == 400
    with pytest.raises(StorageError):
        pool.snapshot_path("c1", name)


def test_ensure_clears_leftovers_of_dead_processes_only(pool: DirPool) -> None:
    dead = pool.path / ".tmp" / "999999999-aaaa"
    mine = pool.path / ".tmp" / f"{os.getpid()}-bbbb"
    (dead / "rootfs").mkdir(parents=True)
    mine.mkdir()
    pool.ensure()
    assert not dead.exists() and mine.exists()


def test_a_spare_copy_makes_create_one_rename(pool: DirPool, template: Path) -> None:
    spare = pool.prepare_spare(template)
    spare_inode = (spare / "rootfs").stat().st_ino
    rootfs = pool.create_from_template("c1", template)
    assert rootfs.stat().st_ino == spare_inode
    assert tree_state(rootfs) == tree_state(template)
    assert stat.S_IMODE(pool.instance_path("c1").stat().st_mode) == 0o711
    assert pool.create_from_template("c2", template).stat().st_ino != spare_inode  # copied
    pool.prepare_spare(template)
    pool.drop_spares()
    assert os.listdir(pool.path / ".spares") == []


def test_usage_and_info_have_lxds_shapes(pool: DirPool) -> None:
    usage = pool.usage()
    assert 0 < usage["space"]["used"] <= usage["space"]["total"]
    assert 0 < usage["inodes"]["used"] <= usage["inodes"]["total"]
    assert pool.info() == {
        "name": "default", "driver": "dir", "description": "",
        "config": {"source": str(pool.path)}, "status": "Created", "locations": ["none"],
        "used_by": [],
    }


def test_each_new_tree_gets_a_block_group_of_its_own(tmp_path: Path) -> None:
    """``.tmp``, where every volume is built, carries ext4's top-directory flag where the
    filesystem has inode flags (see ``storage/topdir.py``), also after an upgrade."""
    probe = tmp_path / "probe"
    probe.mkdir()
    has_flags = spread_subdirectories(probe)
    pool = DirPool("default", tmp_path / "pool")
    pool.ensure()
    assert spreads_subdirectories(pool.path / ".tmp") == has_flags
    subprocess.run(["chattr", "-T", str(pool.path / ".tmp")], check=has_flags)
    assert not spreads_subdirectories(pool.path / ".tmp")
    pool.ensure()
    assert spreads_subdirectories(pool.path / ".tmp") == has_flags
    print(f"\n{tmp_path}: inode flags {'set' if has_flags else 'not supported'}")


def test_the_flag_is_best_effort(tmp_path: Path) -> None:
    assert not spread_subdirectories(tmp_path / "missing")
    assert not spreads_subdirectories(tmp_path / "missing")
    shm = Path("/dev/shm")
    if shm.is_dir():  # tmpfs: no inode flags, no error either
        with tempfile.TemporaryDirectory(dir=shm) as scratch:
            assert not spread_subdirectories(Path(scratch))
