"""Paths inside a rootfs never leave it, whatever symlinks or ``..`` the tree holds."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent import safe_path as sp


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``rootfs`` with malicious links, and a host directory ``outside`` they aim at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("HOST SECRET")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_text("container passwd")
    (rootfs / "x" / "y").mkdir(parents=True)
    (rootfs / "x" / "y" / "rel").symlink_to("../../../../../../../etc/passwd")
    (rootfs / "x" / "y" / "reldir").symlink_to("../../../../../../../etc")
    (rootfs / "etc" / "evil").symlink_to("/etc")
    (rootfs / "abs_out").symlink_to(outside)
    (rootfs / "rel_out").symlink_to("../outside")
    (rootfs / "abs_out_file").symlink_to(outside / "passwd")
    return rootfs, outside


@pytest.fixture
def root(tree: tuple[Path, Path]) -> Iterator[int]:
    with sp.open_root(tree[0]) as fd:
        yield fd


def read(root: int, path: str) -> bytes:
    entry = sp.lookup(root, path)
    assert entry.kind == "file"
    try:
        return os.read(entry.fd, 1 << 20)
    finally:
        os.close(entry.fd)


def test_relative_symlink_climbing_out_resolves_inside(root: int) -> None:
    assert read(root, "/x/y/reldir/passwd") == b"container passwd"
    link = sp.lookup(root, "/x/y/rel")  # a final symlink is reported, not followed
    assert (link.kind, link.target) == ("symlink", "../../../../../../../etc/passwd")
    fd, created = sp.open_for_write(root, "/x/y/rel", append=True)  # writes follow it
    with sp.fd_closing(fd):
        sp.write_all(fd, b"!")
    assert not created and read(root, "/etc/passwd") == b"container passwd!"


def test_absolute_symlink_to_etc_means_the_containers_etc(root: int) -> None:
    assert read(root, "/etc/evil/passwd") == b"container passwd"


def test_dotdot_in_the_requested_path_stops_at_the_root(root: int) -> None:
    assert read(root, "/../../../etc/passwd") == b"container passwd"
    assert read(root, "etc/../../etc/passwd") == b"container passwd"
    with pytest.raises(FileNotFoundError):
        sp.lookup(root, "/../outside/passwd")


def test_symlinked_parent_dir_pointing_outside_is_not_followed_out(
        root: int, tree: tuple[Path, Path]) -> None:
    outside = tree[1]
    for link in ("/abs_out", "/rel_out"):
        with pytest.raises(FileNotFoundError):
            sp.lookup(root, f"{link}/passwd")
        with pytest.raises(FileNotFoundError):
            sp.open_for_write(root, f"{link}/new", append=False)
        with pytest.raises(FileNotFoundError):
            sp.make_dir(root, f"{link}/newdir", -1, -1, 0o755)
        with pytest.raises(FileNotFoundError):
            sp.make_symlink(root, f"{link}/newlink", "/x", -1, -1)
        with pytest.raises(FileNotFoundError):
            sp.remove(root, f"{link}/passwd")
    assert sorted(os.listdir(outside)) == ["passwd"]
    assert (outside / "passwd").read_text() == "HOST SECRET"


def test_writing_through_a_final_symlink_out_stays_inside(
        root: int, tree: tuple[Path, Path]) -> None:
    rootfs, outside = tree
    with pytest.raises(FileNotFoundError):  # <rootfs>/<outside>/passwd has no parent dir
        sp.open_for_write(root, "/abs_out_file", append=False)
    with pytest.raises(FileNotFoundError):
        sp.open_for_write(root, "/abs_out_file", append=True)
    assert (outside / "passwd").read_text() == "HOST SECRET"
    fd, created = sp.open_for_write(root, "/etc/evil/passwd", append=False)
    with sp.fd_closing(fd):
        sp.write_all(fd, b"new")
    assert not created
    assert (rootfs / "etc" / "passwd").read_text() == "new"


def test_create_append_and_overwrite_a_file(root: int, tree: tuple[Path, Path]) -> None:
    rootfs = tree[0]
    with pytest.raises(FileNotFoundError):
        sp.open_for_write(root, "/etc/hosts", append=True)
    fd, created = sp.open_for_write(root, "/etc/hosts", append=False)
    with sp.fd_closing(fd):
        sp.write_all(fd, b"a\n")
        sp.set_owner_mode(fd, -1, -1, 0o640)
    assert created
    fd, created = sp.open_for_write(root, "/etc/hosts", append=True)
    with sp.fd_closing(fd):
        sp.write_all(fd, memoryview(b"b\n"))
    assert not created
    assert (rootfs / "etc" / "hosts").read_text() == "a\nb\n"
    assert (rootfs / "etc" / "hosts").stat().st_mode & 0o7777 == 0o640
    fd, created = sp.open_for_write(root, "/etc/hosts", append=False)
    os.close(fd)
    assert (rootfs / "etc" / "hosts").read_text() == ""


def test_directory_listing_and_entry_kinds(root: int) -> None:
    top = sp.lookup(root, "/")
    assert top.kind == "directory"
    assert top.names == ["abs_out", "abs_out_file", "etc", "rel_out", "x"]
    assert sp.lookup(root, "/etc/").names == ["evil", "passwd"]
    assert sp.lookup(root, "/x/y/..").names == ["y"]
    link = sp.lookup(root, "/etc/evil")
    assert (link.kind, link.target) == ("symlink", "/etc")


def test_fifo_is_refused_without_opening_it(root: int, tree: tuple[Path, Path]) -> None:
    os.mkfifo(tree[0] / "fifo")
    with pytest.raises(OSError) as info:
        sp.lookup(root, "/fifo")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        sp.open_for_write(root, "/fifo", append=False)  # O_NONBLOCK: ENXIO, never blocks
    assert info.value.errno in (errno.ENXIO, errno.EINVAL)


def test_make_dir_and_symlink_and_remove(root: int, tree: tuple[Path, Path]) -> None:
    rootfs = tree[0]
    assert sp.make_dir(root, "/etc/evil/d", -1, -1, 0o751)  # via the /etc symlink: inside
    assert (rootfs / "etc" / "d").stat().st_mode & 0o7777 == 0o751
    assert not sp.make_dir(root, "/etc/d", -1, -1, 0o700)
    assert sp.make_symlink(root, "/etc/d/l", "/etc/passwd", -1, -1)
    assert not sp.make_symlink(root, "/etc/d/l", "/etc/passwd", -1, -1)
    with pytest.raises(FileExistsError):
        sp.make_symlink(root, "/etc/d/l", "/other", -1, -1)
    with pytest.raises(OSError) as info:
        sp.remove(root, "/etc/d")
    assert info.value.errno == errno.ENOTEMPTY
    sp.remove(root, "/etc/d/l")
    sp.remove(root, "/etc/d")
    sp.remove(root, "/etc/evil")  # the link itself, not the directory it names
    assert (rootfs / "etc" / "passwd").exists() and not (rootfs / "etc" / "evil").exists()
    with pytest.raises(FileNotFoundError):
        sp.remove(root, "/etc/nothing")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_ownership_is_set_through_the_fd(root: int, tree: tuple[Path, Path]) -> None:
    fd, _ = sp.open_for_write(root, "/owned", append=False)
    with sp.fd_closing(fd):
        sp.set_owner_mode(fd, 1_000_033, 1_000_044, 0o600)
    st = (tree[0] / "owned").stat()
    assert (st.st_uid, st.st_gid) == (1_000_033, 1_000_044)
    assert sp.make_symlink(root, "/lnk", "/owned", 1_000_000, 1_000_000)
    assert (tree[0] / "lnk").lstat().st_uid == 1_000_000


@pytest.mark.parametrize("bad", ["", "/", "/etc/..", "/.", "a\0b"])
def test_paths_that_name_no_entry_are_invalid(bad: str) -> None:
    with pytest.raises(OSError) as info:
        sp.split(bad)
    assert info.value.errno == errno.EINVAL


def test_relative_paths_start_at_the_root() -> None:
    assert sp.clean("etc/hosts") == "/etc/hosts"
    assert sp.split("/etc/hosts/") == ("/etc", "hosts")
    assert sp.split("/hosts") == ("/", "hosts")
