"""Moving an instance volume between members as a tar stream (no shared filesystem).

The stream holds ``containers/<name>`` and ``containers-snapshots/<name>`` relative to the
pool, with numeric owners (the shifted ids of an unprivileged container), modes, links,
device nodes, xattrs and ACLs. The receiver unpacks into a scratch directory of its pool
and renames the result into place only once tar has read a complete archive, so a cut
stream leaves nothing behind.

A move of a running instance first *pre-copies* the volume while it runs (into
``precopy_dir``), then, once it is stopped, sends only what changed since the pre-copy
began (``tar --newer``: data or metadata, by ctime) and the list of every path, by which
the receiver removes what was deleted in between. Unpacking is slow where creating
files is (on ext4 without a journal, beside files deleted a moment before: see
``topdir``), and that is no longer time the instance is down.

The receiver's tar runs with ``--absolute-names``: without it GNU tar extracts every
symlink with an absolute target (a busybox rootfs is ~270 of them) as a placeholder file,
then deletes it and makes the link at the end: three inodes' work for one, which halved
the unpack time here. That safety guards against archives from strangers; these streams
come only from cluster members, which hold the cluster key and can already run anything
on any member, and name only ``containers/`` paths relative to the pool.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

from node_agent.storage.dir import _remove_tree
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound

CHUNK = 1 << 20
TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]


class VolumeHolder(Protocol):
    """What holds volumes: a DirPool, or the VM directories (``vm_volumes.VmVolumes``)."""

    path: Path

    def exists(self, name: str) -> bool: ...

    def instance_path(self, name: str) -> Path: ...

    def snapshots_path(self, name: str) -> Path: ...

    def incoming_scratch(self) -> Path: ...

    def adopt(self, name: str, scratch: Path) -> None: ...

    def discard_scratch(self, scratch: Path) -> None: ...


def volume_members(pool: VolumeHolder, name: str) -> list[str]:
    """The pool-relative paths that make up ``name``'s volume (blocking: stats)."""
    if not pool.exists(name):
        raise VolumeNotFound(f"instance volume {name} not found")
    found = [str(pool.instance_path(name).relative_to(pool.path))]
    snapshots = pool.snapshots_path(name)
    if snapshots.is_dir():
        found.append(str(snapshots.relative_to(pool.path)))
    return found


def volume_listing(pool: VolumeHolder, name: str) -> bytes:
    """Every path of ``name``'s volume with its kind, NUL-separated (blocking): what the
    receiver of a delta keeps of its pre-copy."""
    entries = []
    for member in volume_members(pool, name):
        entries.append(_entry(pool.path / member, member))
        for dirpath, dirnames, filenames in os.walk(pool.path / member):
            relative = os.path.relpath(dirpath, pool.path)
            for child in (*dirnames, *filenames):
                entries.append(_entry(Path(dirpath, child), f"{relative}/{child}"))
    return b"\0".join(entries)


def _entry(path: Path, relative: str) -> bytes:
    mode = path.lstat().st_mode
    kind = b"d" if stat.S_ISDIR(mode) else b"l" if stat.S_ISLNK(mode) else b"f"
    return kind + os.fsencode(relative)


def prune_to_listing(root: Path, listing: bytes) -> None:
    """Remove from ``root`` (laid out as the pool) every path the listing lacks or lists
    with another kind (blocking)."""
    keep = set(listing.split(b"\0"))
    for item in list(keep):  # and the directories above the volume (containers/...)
        above = item[1:]
        while b"/" in above:
            above = above.rsplit(b"/", 1)[0]
            keep.add(b"d" + above)
    for dirpath, dirnames, filenames in os.walk(root):
        relative = os.path.relpath(dirpath, root)
        for child in (*dirnames, *filenames):
            path = Path(dirpath, child)
            if _entry(path, child if relative == "." else f"{relative}/{child}") in keep:
                continue
            if child in dirnames and not path.is_symlink():
                dirnames.remove(child)
                _remove_tree(path)
            else:
                path.unlink()


def precopy_dir(pool: VolumeHolder, uid: str) -> Path:
    """Where the pre-copy of a move of instance ``uid`` waits: in the pool's ``.tmp``,
    which the pool clears of a gone process's entries (``DirPool.ensure``)."""
    return pool.path / ".tmp" / f"{os.getpid()}-pre-{uid}"


def start_precopy(pool: VolumeHolder, uid: str) -> Path:
    """A fresh ``precopy_dir`` for a move of instance ``uid`` (an older one is dropped),
    laid out as the pool; the caller may put a base for the stream there (blocking)."""
    discard_precopy(pool, uid)
    path = precopy_dir(pool, uid)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o711)
    return path


async def precopy_volume(pool: VolumeHolder, uid: str, chunks: AsyncIterator[bytes],
                         listing: bytes | None = None) -> int:
    """Unpack a stream of a running instance's volume into its ``start_precopy`` dir;
    with ``listing`` the stream only holds what differs from the base already there,
    pruned to the listing first. Returns the bytes read; drops the pre-copy on failure."""
    target = precopy_dir(pool, uid)
    try:
        if listing is not None:
            await asyncio.to_thread(prune_to_listing, target, listing)
        return await _untar(target, chunks, lambda _: None)
    except BaseException:
        await asyncio.to_thread(discard_precopy, pool, uid)
        raise


def discard_precopy(pool: VolumeHolder, uid: str) -> None:
    path = precopy_dir(pool, uid)
    if os.path.lexists(path):
        _remove_tree(path)
    path.with_name(path.name + ".since").unlink(missing_ok=True)


async def send_volume(pool: VolumeHolder, name: str,
                      write: Callable[[bytes], Awaitable[None]],
                      newer: float | None = None) -> int:
    """Write ``name``'s volume as a tar stream through ``write``; returns the bytes sent.
    With ``newer`` (seconds since the epoch), only what changed since then (directories
    always). Raises StorageError if tar fails (the caller must then cut the stream
    short)."""
    members = await asyncio.to_thread(volume_members, pool, name)
    since = [] if newer is None else [f"--newer=@{newer:.6f}"]
    proc = await asyncio.create_subprocess_exec(
        "tar", *TAR_FLAGS, *since, "-C", str(pool.path), "-cf", "-", "--", *members,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    sent = 0
    try:
        while chunk := await proc.stdout.read(CHUNK):
            await write(chunk)
            sent += len(chunk)
        errors = await proc.stderr.read()
        if await proc.wait() != 0:
            raise StorageError(f"reading volume {name} failed: {errors.decode()[-400:]}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()  # drain the pipes: wait() alone hangs on a full one
    return sent


async def receive_volume(pool: VolumeHolder, name: str, chunks: AsyncIterator[bytes],
                         progress: Callable[[int], None] = lambda _: None,
                         precopied: tuple[str, bytes] | None = None) -> int:
    """Unpack a stream from ``send_volume`` as ``name``'s volume; returns the bytes read.
    With ``precopied`` (the move's instance uid and the source's ``volume_listing``) the
    stream is a delta applied to that move's pre-copy. Raises VolumeExists if this pool
    already has the volume, StorageError on a bad or incomplete stream; either way
    nothing is left in the pool."""
    if await asyncio.to_thread(pool.exists, name):
        raise VolumeExists(f"instance volume {name} already exists on this member")
    if precopied is None:
        scratch = await asyncio.to_thread(pool.incoming_scratch)
    else:
        scratch = precopy_dir(pool, precopied[0])
        if not scratch.is_dir():
            raise StorageError(f"no pre-copy of {name} is waiting on this member")
    try:
        if precopied is not None:
            await asyncio.to_thread(prune_to_listing, scratch, precopied[1])
        received = await _untar(scratch, chunks, progress)
        await asyncio.to_thread(pool.adopt, name, scratch)
        return received
    finally:
        await asyncio.to_thread(pool.discard_scratch, scratch)


async def _untar(into: Path, chunks: AsyncIterator[bytes], progress: Callable[[int], None],
                 ) -> int:
    proc = await asyncio.create_subprocess_exec(
        "tar", *TAR_FLAGS, "--same-permissions", "--absolute-names", "-C", str(into),
        "-xf", "-",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    received = 0
    try:
        async for chunk in chunks:
            proc.stdin.write(chunk)
            await proc.stdin.drain()
            received += len(chunk)
            progress(received)
        proc.stdin.close()
        errors = await proc.stderr.read()
        if await proc.wait() != 0:
            raise StorageError(f"unpacking the volume failed: {errors.decode()[-400:]}")
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise StorageError(f"unpacking the volume failed: {exc}") from exc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    return received
