"""Moving an instance volume between members as a tar stream (no shared filesystem).

The stream holds ``containers/<name>`` and ``containers-snapshots/<name>`` relative to the
pool, with numeric owners (the shifted ids of an unprivileged container), modes, links,
device nodes, xattrs and ACLs. The receiver unpacks into a scratch directory of its pool
and renames the result into place only once tar has read a complete archive, so a cut
stream leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

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


async def send_volume(pool: VolumeHolder, name: str,
                      write: Callable[[bytes], Awaitable[None]]) -> int:
    """Write ``name``'s volume as a tar stream through ``write``; returns the bytes sent.
    Raises StorageError if tar fails (the caller must then cut the stream short)."""
    members = await asyncio.to_thread(volume_members, pool, name)
    proc = await asyncio.create_subprocess_exec(
        "tar", *TAR_FLAGS, "-C", str(pool.path), "-cf", "-", "--", *members,
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
                         progress: Callable[[int], None] = lambda _: None) -> int:
    """Unpack a stream from ``send_volume`` as ``name``'s volume; returns the bytes read.
    Raises VolumeExists if this pool already has the volume, StorageError on a bad or
    incomplete stream; either way nothing is left in the pool."""
    if await asyncio.to_thread(pool.exists, name):
        raise VolumeExists(f"instance volume {name} already exists on this member")
    scratch = await asyncio.to_thread(pool.incoming_scratch)
    try:
        received = await _untar(scratch, chunks, progress)
        await asyncio.to_thread(pool.adopt, name, scratch)
        return received
    finally:
        await asyncio.to_thread(pool.discard_scratch, scratch)


async def _untar(into: Path, chunks: AsyncIterator[bytes], progress: Callable[[int], None],
                 ) -> int:
    proc = await asyncio.create_subprocess_exec(
        "tar", *TAR_FLAGS, "--same-permissions", "-C", str(into), "-xf", "-",
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
