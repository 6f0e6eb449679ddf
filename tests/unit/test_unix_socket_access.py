"""``cluster.transport.unix_socket``: the API socket is bound with its final owner and
mode (0600 for root alone; 0660 with the group when the group exists), on a real socket
file, replacing a stale one and leaving no scratch directory behind."""

from __future__ import annotations

import grp
import os
import secrets
import socket
import stat
from pathlib import Path

from cluster.transport.unix_socket import Access, access_for, bind_socket, group_id


def some_group() -> grp.struct_group:
    """A group of this machine other than the process's own (so a chown shows)."""
    own = os.getegid()
    return next(g for g in grp.getgrall() if g.gr_gid != own)


def serves(sock: socket.socket, path: Path) -> bool:
    sock.listen(1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        peer, _ = sock.accept()
        with peer:
            client.sendall(b"x")
            return peer.recv(1) == b"x"


def test_without_the_group_only_root_may_connect(tmp_path: Path) -> None:
    path = tmp_path / "unix.socket"
    missing = f"corral-nosuch-{secrets.token_hex(4)}"
    assert group_id(missing) is None
    sock, access = bind_socket(path, missing)
    with sock:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600 and access == Access(0o600, -1)
        assert info.st_gid == os.getegid()
        assert serves(sock, path)


def test_with_the_group_its_members_may_connect(tmp_path: Path) -> None:
    group = some_group()
    path = tmp_path / "unix.socket"
    sock, access = bind_socket(path, group.gr_name)
    with sock:
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == group.gr_gid and access.gid == group.gr_gid
        assert access.describe(group.gr_name) == f"0660, group {group.gr_name}"
        assert serves(sock, path)


def test_a_stale_socket_is_replaced_and_no_scratch_dir_is_left(tmp_path: Path) -> None:
    path = tmp_path / "unix.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # a daemon killed -9 leaves its socket file
    stale_inode = path.stat().st_ino
    sock, _ = bind_socket(path, f"corral-nosuch-{secrets.token_hex(4)}")
    with sock:
        assert path.stat().st_ino != stale_inode
        assert serves(sock, path)
    assert [p.name for p in tmp_path.iterdir()] == ["unix.socket"]


def test_access_is_group_readable_only_with_a_group() -> None:
    assert access_for(None) == Access(0o600, -1)
    assert access_for(123) == Access(0o660, 123)
    assert access_for(None).describe("corral") == "0600, root only"
