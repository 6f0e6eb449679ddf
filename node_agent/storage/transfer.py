"""Moving an instance volume between members as a tar stream (no shared filesystem).

The stream holds ``containers/<name>`` and ``containers-snapshots/<name>`` relative to the
pool, with numeric owners (the shifted ids of an unprivileged container), modes, links,
device nodes, xattrs and ACLs. The receiver unpacks into a scratch directory of its pool
and renames the result into place only once tar has read a complete archive, so a cut
stream leaves nothing behind.

A move of a running instance first *pre-copies* the volume while it runs (into
``precopy_dir``), then, once it is stopped, sends only what changed since (a *delta*)
and the list of every path, by which the receiver removes what was deleted in between.
Unpacking is slow where creating files is (on ext4 without a journal, beside files
deleted a moment before: see ``topdir``), and that is no longer time the instance is
down.

What changed is told by a manifest (``storage/manifest.py``), not by change time alone
(``tar --newer``): the files of a directory moved in the container keep their change
times, and the receiver, which prunes the old path, would never get them. The sender
walks the volume before and after the pre-copy's tar and keeps what was settled across
it (``manifest.settled``) as the ``Basis`` of the delta: every path not in it, of another
inode or changed since (or just before) is sent again, with every directory. A pre-copy
onto a spare of the image on the receiver sends likewise what differs from the spare's
manifest (``storage/baseline.py``). Both sends are ``tar`` recursing over the volume
(it never follows a symlink, which a running container may put anywhere) and leaving out
the unchanged files (``--exclude-from``, exact names).

The receiver's tar runs with ``--absolute-names``: without it GNU tar extracts every
symlink with an absolute target (a busybox rootfs is ~270 of them) as a placeholder file,
then deletes it and makes the link at the end: three inodes' work for one, which halved
the unpack time here. That safety guards against archives from strangers; these streams
come only from cluster members, which hold the cluster key and can already run anything
on any member, and name only ``containers/`` paths relative to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node_agent.storage import manifest
from node_agent.storage.baseline import MANIFEST, read_baseline_manifest
from node_agent.storage.dir import _remove_tree
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound
from node_agent.storage.tar_output import unexpected_warnings

CHUNK = 1 << 20
TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]
SAME_PRECOPY_S = 1e-3  # a delta names its pre-copy by the moment it began


@dataclass(frozen=True)
class Basis:
    """What a receiver holds of a volume, as the sender knows it: ``{kind+path: (inode,
    change time)}`` by pool-relative path, and a moment (ns, the sender's clock) before
    the sender read it."""

    held: Mapping[bytes, tuple[int, int]]
    moment_ns: int

    def encode(self) -> bytes:
        entries = (manifest.Entry(key[1:], key[:1], ino, ctime)
                   for key, (ino, ctime) in self.held.items())
        return b"%d\n" % self.moment_ns + manifest.encode(entries)

    @classmethod
    def decode(cls, data: bytes) -> Basis:
        """ValueError if ``data`` is no encoded Basis."""
        moment, _, held = data.partition(b"\n")
        return cls(manifest.decode(held), int(moment))


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


def volume_entries(pool: VolumeHolder, name: str) -> list[manifest.Entry]:
    """Every path of ``name``'s volume (pool-relative), each directory before what is
    in it, but the member's private ones (``is_private``) (blocking)."""
    entries: list[manifest.Entry] = []
    for member in volume_members(pool, name):
        walked = manifest.under(manifest.scan(pool.path / member), os.fsencode(member))
        entries.extend(e for e in walked if not is_private(e.path))
    return entries


def is_private(relative: bytes) -> bool:
    """Whether a pool-relative path is the holding member's own record, never sent nor
    pruned by a move: the manifest of the spare a volume was made from
    (``<kind>/<name>/.baseline-manifest``), which names this member's inodes."""
    parts = relative.split(b"/")
    return len(parts) == 3 and parts[2] == os.fsencode(MANIFEST)


def volume_listing(pool: VolumeHolder, name: str) -> bytes:
    """Every path of ``name``'s volume with its kind, NUL-separated (blocking): what the
    receiver of a delta keeps of its pre-copy."""
    return b"\0".join(e.key for e in volume_entries(pool, name))


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
            inside = child if relative == "." else f"{relative}/{child}"
            if is_private(os.fsencode(inside)) or _entry(path, inside) in keep:
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


def _sent_path(pool: VolumeHolder, uid: str) -> Path:
    """Where the sender keeps the Basis of a pre-copy of instance ``uid`` until its
    delta: in the pool's ``.tmp``, so a restart forgets it (the delta is then whole)."""
    return pool.path / ".tmp" / f"{os.getpid()}-sent-{uid}"


def keep_sent(pool: VolumeHolder, uid: str, basis: Basis) -> None:
    """Keep what a pre-copy of ``uid`` sent, for its delta (blocking)."""
    path = _sent_path(pool, uid)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = path.with_name(f"{path.name}.{secrets.token_hex(6)}")
    try:
        scratch.write_bytes(basis.encode())
        os.rename(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def take_sent(pool: VolumeHolder, uid: str, began: float) -> Basis | None:
    """The Basis of the pre-copy of ``uid`` that began at ``began`` (seconds, as its
    ``send_precopy``), forgotten here: a pre-copy has one delta. None if this member
    keeps none, or another pre-copy's (blocking)."""
    path = _sent_path(pool, uid)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        basis = Basis.decode(data)
    except ValueError:
        return None
    return basis if abs(basis.moment_ns / 1e9 - began) < SAME_PRECOPY_S else None


def baseline_basis(pool: VolumeHolder, name: str, since: float) -> Basis | None:
    """What a receiver's spare of the volume's image holds of it, by the manifest of the
    spare the volume was made from at ``since`` (its baseline's moment); None if the
    volume has no such manifest (blocking)."""
    volume = pool.instance_path(name)
    held = read_baseline_manifest(volume)
    if held is None:
        return None
    prefix = os.fsencode(volume.relative_to(pool.path))
    return Basis(manifest.held_under(held, prefix), round(since * 1e9))


async def send_volume(pool: VolumeHolder, name: str,
                      write: Callable[[bytes], Awaitable[None]],
                      basis: Basis | None = None) -> int:
    """Write the volume of a stopped instance as a tar stream through ``write``; returns
    the bytes sent. With ``basis``, only what the receiver does not hold as it is now
    (and every directory). Raises StorageError if tar fails (the caller must then cut
    the stream short)."""
    skip: list[bytes] = []
    if basis is not None:
        skip = await asyncio.to_thread(_unchanged, pool, name, basis)
    sent, _ = await _tar_volume(pool, name, skip, write, changing=False)
    return sent


async def send_precopy(pool: VolumeHolder, name: str,
                       write: Callable[[bytes], Awaitable[None]], began: float,
                       basis: Basis | None = None) -> tuple[int, Basis]:
    """Write the volume of a running instance (only what the receiver does not hold of
    ``basis`` as it is now, with every directory) as a tar stream through ``write``.
    Returns the bytes sent and the Basis for the delta: what the receiver is known to
    hold once the stream is unpacked. ``began`` is a moment (seconds, this member's
    clock) before this call. Raises StorageError if tar fails or reports more than the
    volume changing under it."""
    moment_ns = round(began * 1e9)
    before = await asyncio.to_thread(volume_entries, pool, name)
    skip = [] if basis is None else skippable(before, basis)
    sent, warnings = await _tar_volume(pool, name, skip, write, changing=True)
    odd = unexpected_warnings(warnings)
    if odd:
        raise StorageError(f"reading volume {name} failed: "
                           f"{b' '.join(odd).decode(errors='replace')[-400:]}")
    after = await asyncio.to_thread(volume_entries, pool, name)
    kept = manifest.settled(before, after, moment_ns)
    return sent, Basis({e.key: (e.ino, e.ctime_ns) for e in kept}, moment_ns)


def _unchanged(pool: VolumeHolder, name: str, basis: Basis) -> list[bytes]:
    return skippable(volume_entries(pool, name), basis)


def skippable(entries: list[manifest.Entry], basis: Basis) -> list[bytes]:
    """The files of ``entries`` a send may leave out: held as they are by the receiver
    (and every other name of a hard link with them), named so that tar's exclusion
    matches exactly them."""
    chosen = set(manifest.to_send(entries, basis.held, basis.moment_ns))
    files = [e for e in entries if e.kind != b"d"]
    sent = {e.ino for e in files if e.nlink > 1  # a link sent alone would be a copy
            and (e.path in chosen or not exact_pattern(e.path))}
    return [e.path for e in files if e.path not in chosen and exact_pattern(e.path)
            and not (e.nlink > 1 and e.ino in sent)]


def exact_pattern(path: bytes) -> bool:
    """Whether ``--exclude-from`` reads ``path`` back as itself: one line, no trailing
    white space (which it strips), no backslash."""
    return b"\n" not in path and b"\\" not in path and path == path.rstrip(b" \t\v\f\r")


async def _tar_volume(pool: VolumeHolder, name: str, skip: list[bytes],
                      write: Callable[[bytes], Awaitable[None]], changing: bool,
                      ) -> tuple[int, bytes]:
    """Tar the volume (every path but ``skip`` and the private ones) through ``write``;
    the bytes sent and tar's warnings. ``changing``: the instance runs, so a path may
    change or vanish while tar reads it (the caller judges the warnings)."""
    members = await asyncio.to_thread(volume_members, pool, name)
    private = [os.fsencode(f"{members[0]}/{MANIFEST}")]
    tolerant = ["--ignore-failed-read"] if changing else []
    proc = await asyncio.create_subprocess_exec(
        "tar", *TAR_FLAGS, *tolerant, "--anchored", "--no-wildcards", "--exclude-from=-",
        "-C", str(pool.path), "-cf", "-", "--", *members,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "LC_ALL": "C"})
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    feeder = asyncio.create_task(_feed(proc.stdin, b"".join(p + b"\n" for p in
                                                            (*private, *skip))))
    errors = asyncio.create_task(proc.stderr.read())  # read meanwhile: a full pipe blocks tar
    sent = 0
    try:
        while chunk := await proc.stdout.read(CHUNK):
            await write(chunk)
            sent += len(chunk)
        await feeder
        rc = await proc.wait()
        warnings = await errors
        if rc not in ((0, 1) if changing else (0,)):
            raise StorageError(f"reading volume {name} failed: "
                               f"{warnings.decode(errors='replace')[-400:]}")
    finally:
        for task in (feeder, errors):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()  # drain the pipes: wait() alone hangs on a full one
    return sent, warnings


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
        stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # tar died: its exit status says why


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
