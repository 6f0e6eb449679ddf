"""File operations inside a container's root filesystem that can never leave it.

Every lookup goes through ``openat2(2)`` with ``RESOLVE_IN_ROOT`` relative to an
``O_PATH`` fd of the rootfs, so ``..``, absolute symlinks and relative symlinks are
resolved as a process chrooted into the rootfs would see them: ``/etc/evil -> /etc``
means ``<rootfs>/etc``, never the host's ``/etc``. Every change is then made
through fds (the final file's fd, or its pinned parent directory's fd plus a single
name), so swapping a path component for a symlink between the lookup and the write
cannot redirect it.

All functions block and raise ``OSError`` (``ENOENT`` for a missing path, ``EINVAL``
for a request that cannot name a file, ...); callers translate errno once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SYS_OPENAT2 = 437  # the same number on every architecture (added in Linux 5.6)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_EAGAIN_RETRIES = 16

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = IN_ROOT) -> int:
    """``openat2(2)``: a new fd (always ``O_CLOEXEC``); raises ``OSError`` with its errno.

    ``EAGAIN`` (a concurrent rename seen during ``RESOLVE_IN_ROOT``) and ``EINTR`` are
    retried.
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    raw = os.fsencode(path)
    for _ in range(_EAGAIN_RETRIES):
        fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd),
                           ctypes.c_char_p(raw), ctypes.byref(how),
                           ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def clean(path: str) -> str:
    """The container path as an absolute path; ``EINVAL`` if it cannot name a file.

    A relative path is taken from ``/`` (the working directory of LXD's file server).
    ``..`` is left for the kernel: inside the root it stops at ``/`` as in a chroot.
    """
    if not path or "\0" in path:
        raise OSError(errno.EINVAL, "Invalid path", path)
    return path if path.startswith("/") else "/" + path


def split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a path that names an entry; ``EINVAL`` for ``/``, ``.``, ``..``."""
    trimmed = clean(path).rstrip("/")
    parent, _, name = trimmed.rpartition("/")
    if name in ("", ".", ".."):
        raise OSError(errno.EINVAL, "Path does not name a file", path)
    return parent or "/", name


@contextmanager
def fd_closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def open_root(rootfs: str | os.PathLike[str]) -> Iterator[int]:
    """An ``O_PATH`` directory fd of the rootfs (a host path, trusted), closed on exit."""
    with fd_closing(os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) as fd:
        yield fd


@contextmanager
def open_parent(root: int, path: str) -> Iterator[tuple[int, str]]:
    """The pinned parent directory of ``path`` (``O_PATH``) and the entry's name in it."""
    parent, name = split(path)
    with fd_closing(openat2(root, parent, os.O_PATH | os.O_DIRECTORY)) as fd:
        yield fd, name


@dataclass
class Entry:
    """What ``lookup`` found, without following a final symlink (``lstat`` semantics).

    ``fd`` is an open read-only fd for a regular file (the caller closes it);
    ``names`` lists a directory; ``target`` is a symlink's text.
    """

    kind: str  # "file" | "directory" | "symlink"
    st: os.stat_result
    fd: int = -1
    names: list[str] | None = None
    target: str = ""


def lookup(root: int, path: str) -> Entry:
    """Stat, list, read-link or open the entry at ``path`` inside the root.

    Raises ``ENOENT``/``ENOTDIR`` for a missing path and ``EINVAL`` for a device,
    FIFO or socket (they are not opened: opening a device can have side effects).
    """
    path = clean(path)
    if path.rstrip("/") == "" or path.rstrip("/").endswith(("/.", "/..")):
        with fd_closing(openat2(root, path, os.O_RDONLY | os.O_DIRECTORY)) as fd:
            return Entry("directory", os.fstat(fd), names=sorted(os.listdir(fd)))
    with open_parent(root, path) as (parent, name):
        with fd_closing(openat2(parent, name, os.O_PATH | os.O_NOFOLLOW)) as pfd:
            st = os.fstat(pfd)
            if stat.S_ISLNK(st.st_mode):
                return Entry("symlink", st, target=os.readlink(name, dir_fd=parent))
            if stat.S_ISDIR(st.st_mode):
                with fd_closing(openat2(pfd, ".", os.O_RDONLY | os.O_DIRECTORY)) as dfd:
                    return Entry("directory", st, names=sorted(os.listdir(dfd)))
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "Not a regular file, directory or symlink", path)
            fd = openat2(parent, name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
            st2 = os.fstat(fd)
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # swapped between the two opens: refuse rather than guess
                raise OSError(errno.EAGAIN, "File changed during lookup", path)
            return Entry("file", st2, fd=fd)


def open_for_write(root: int, path: str, append: bool) -> tuple[int, bool]:
    """An fd to write a regular file at ``path`` and whether it was created.

    Overwrite truncates (creating the file, mode 0600 until the caller sets it); append
    needs an existing file (``ENOENT``). A final symlink is followed inside the root, as
    a write from inside the container would. Anything but a regular file is ``EINVAL``.
    """
    path = clean(path)
    base = os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK
    created = False
    if append:
        fd = openat2(root, path, base | os.O_APPEND)
    else:
        try:
            fd = openat2(root, path, base | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = openat2(root, path, base | os.O_TRUNC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def set_owner_mode(fd: int, uid: int, gid: int, mode: int) -> None:
    """``fchown`` (``-1`` keeps an id) then ``fchmod`` (``-1`` keeps the mode)."""
    if uid >= 0 or gid >= 0:
        os.fchown(fd, uid, gid)
    if mode >= 0:
        os.fchmod(fd, mode & 0o7777)


def make_dir(root: int, path: str, uid: int, gid: int, mode: int) -> bool:
    """Create a directory (parent must exist); ``False`` if ``path`` already exists."""
    with open_parent(root, path) as (parent, name):
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            return False
        with fd_closing(openat2(parent, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)) \
                as fd:
            set_owner_mode(fd, uid, gid, mode)
    return True


def make_symlink(root: int, path: str, target: str, uid: int, gid: int) -> bool:
    """Create a symlink (its text is not resolved); ``False`` if the same one exists.

    A different existing entry is ``EEXIST``.
    """
    if not target or "\0" in target:
        raise OSError(errno.EINVAL, "Invalid symlink target", path)
    with open_parent(root, path) as (parent, name):
        try:
            if os.readlink(name, dir_fd=parent) == target:
                return False
        except OSError as exc:  # ENOENT: nothing there; EINVAL: not a symlink
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise
        os.symlink(target, name, dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    return True


def remove(root: int, path: str) -> None:
    """Remove a file, symlink (not its target) or empty directory (``ENOTEMPTY`` else)."""
    with open_parent(root, path) as (parent, name):
        try:
            os.unlink(name, dir_fd=parent)
        except IsADirectoryError:
            os.rmdir(name, dir_fd=parent)
