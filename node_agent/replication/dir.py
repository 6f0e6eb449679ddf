"""Replicas on a ``dir`` pool: a manifest-chosen tar delta, applied to a hard-link copy.

::

    source  <pool>/replication/<instance>/<snap>   the manifest of each snapshot sent
                                                   (``manifest``; the newest 3 are kept)
    holder  <pool>/replicas/<uid>/<snap>/          a complete snapshot: the instance
                                                   volume's tree (rootfs/ inside)
            <pool>/.tmp/<pid>-in-<token>/          one being received

The source walks the volume and sends the paths gone since the parent
(``manifest.removed``) and a tar of what the manifest of the parent says changed
(``manifest.to_send``). The holder copies its parent snapshot as hard links (``cp -al``:
owners, modes and xattrs are the inodes' own, so they are kept by construction), deletes
the gone paths from the copy, and unpacks the tar into it. GNU tar unlinks a file before
it writes one in its place (it is not run with ``--overwrite``), so the inodes the copy
shares with the parent are never written: every snapshot stays as it was received. The
copy is renamed into ``replicas/`` only once the stream ended with its end mark; a cut
or bad stream leaves only the scratch directory, which is removed at once (or by
``DirPool.ensure`` after a crash).

The instance runs while its volume is read and may turn any directory in it into a
symlink to anywhere between the walk and the tar, so tar is never given a path below
the volume's root to open: it recurses from the root (never following a symlink) and
leaves out the unchanged files by exact name (``transfer.skippable``). It may so find
paths made after the walk; the manifest kept of the snapshot names them as well (tar
lists what it archives: ``manifest.with_archived``), so the next delta deletes them from
the holder once they are gone. A send fails, and the holder keeps nothing of it, if tar
warns of more than the volume changing under it: a file it could not read would be
missing from the replica (``tar_output.unexpected_warnings``).

Promotion renames the snapshot to the instance volume; the holder's older snapshots of
it are deleted first, because they share inodes with what is about to become writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from node_agent.replication.base import discard
from node_agent.replication.errors import BadStream, ParentNotHeld
from node_agent.replication.framing import FrameWriter, Header
from node_agent.replication.names import (
    KEEP_RECEIVED,
    KEEP_SENT,
    is_snapshot_name,
    moment_ns,
    to_drop,
)
from node_agent.storage import manifest
from node_agent.storage.baseline import clear_baseline
from node_agent.storage.dir import (
    _RENAME_NOREPLACE,
    DirPool,
    _check_name,
    _names,
    _remove_tree,
    _rename,
)
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound
from node_agent.storage.tar_output import split_listing, unexpected_warnings
from node_agent.storage.transfer import CHUNK, TAR_FLAGS, Basis, _untar, skippable

LINK_COPY_TIMEOUT = 600.0
# tar exits 1 when a file changed while it read it: a running instance's volume does.
# Such a file has a newer change time than its manifest says, so the next delta has it.
_TAR_OK = (0, 1)


class DirReplicas:
    kind = "dir"

    def __init__(self, pool: DirPool) -> None:
        self.pool = pool

    # source --------------------------------------------------------------------

    def sent_snapshots(self, name: str) -> list[str]:
        try:
            found = os.listdir(self.pool.replication_path(name))
        except FileNotFoundError:
            return []
        return sorted(n for n in found if is_snapshot_name(n))

    async def send(self, name: str, uid: str, parent: str | None, snapshot: str,
                   out: FrameWriter) -> bool:
        volume = self.pool.instance_path(name)
        if not volume.is_dir():
            raise VolumeNotFound(f"instance volume {name} not found")
        held = await asyncio.to_thread(self._manifest, name, parent)
        base = parent if held is not None else None
        entries = await asyncio.to_thread(manifest.scan, volume)
        skip, gone = [], b""
        if held is not None and base is not None:
            skip = skippable(entries, Basis(held, moment_ns(base)))
            gone = manifest.removed(entries, held)
        await out.header(Header(self.kind, uid, base, snapshot, gone))
        archived = await _tar(volume, skip, out.payload)
        await out.end()
        kept = manifest.encode(manifest.with_archived(entries, archived))
        await asyncio.to_thread(self._remember, name, snapshot, kept, parent)
        return held is None

    def _manifest(self, name: str, parent: str | None) -> dict[bytes, tuple[int, int]] | None:
        """The manifest of ``parent`` if this source still has it (and it reads)."""
        if parent is None or not is_snapshot_name(parent):
            return None
        try:
            return manifest.decode((self.pool.replication_path(name) / parent).read_bytes())
        except (OSError, ValueError):
            return None

    def _remember(self, name: str, snapshot: str, data: bytes, parent: str | None) -> None:
        """Keep ``snapshot``'s manifest (written whole, then renamed in) and drop all but
        the newest ``KEEP_SENT`` and ``parent``."""
        holder = self.pool.replication_path(name)
        holder.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = self.pool.tmp() / f"{os.getpid()}-manifest-{secrets.token_hex(6)}"
        try:
            with open(scratch, "wb") as f:
                f.write(data)
            os.rename(scratch, holder / snapshot)
        finally:
            scratch.unlink(missing_ok=True)
        for old in to_drop(self.sent_snapshots(name), KEEP_SENT, [parent, snapshot]):
            with contextlib.suppress(OSError):  # housekeeping: the next round retries
                (holder / old).unlink()

    # holder --------------------------------------------------------------------

    def snapshots(self, uid: str) -> list[str]:
        return [n for n in _names(self.pool.replicas_path(uid)) if is_snapshot_name(n)]

    def uids(self) -> list[str]:
        return [uid for uid in _names(self.pool.path / "replicas") if self.snapshots(uid)]

    async def receive(self, uid: str, header: Header, payload: AsyncIterator[bytes]) -> None:
        holder = self.pool.replicas_path(uid)
        target = holder / _check_name(header.snapshot)
        if os.path.lexists(target):
            raise VolumeExists(f"replica {uid}/{header.snapshot} already exists")
        parent = None
        if header.parent is not None:
            parent = holder / _check_name(header.parent)
            if not parent.is_dir():
                raise ParentNotHeld(f"replica {uid}/{header.parent} is not held here")
        scratch = await asyncio.to_thread(self.pool.incoming_scratch)
        try:
            volume = scratch / "volume"
            if parent is None:
                volume.mkdir(mode=0o711)
            else:
                await asyncio.to_thread(_link_copy, parent, volume)
            await asyncio.to_thread(_prune, volume, header.removed)
            await _untar(volume, payload, lambda _: None)
            await asyncio.to_thread(self._place, volume, target)
        finally:
            await asyncio.to_thread(self.pool.discard_scratch, scratch)
        await asyncio.to_thread(self._trim, uid)

    def _place(self, volume: Path, target: Path) -> None:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _rename(volume, target, _RENAME_NOREPLACE, what=f"replica {target.name}")

    def _trim(self, uid: str) -> None:
        """Housekeeping after a good receive, so never its failure."""
        for old in to_drop(self.snapshots(uid), KEEP_RECEIVED):
            with contextlib.suppress(OSError, StorageError):
                self._discard(self.pool.replicas_path(uid) / old)

    def drop(self, uid: str) -> None:
        self._discard(self.pool.replicas_path(uid))

    def _discard(self, path: Path) -> None:
        discard(self.pool, path)

    def promote(self, uid: str, snapshot: str, name: str) -> None:
        target = self.pool.instance_path(name)
        source = self.pool.replicas_path(uid) / _check_name(snapshot)
        if os.path.lexists(target):
            raise VolumeExists(f"instance volume {name} already exists")
        if not source.is_dir():
            raise VolumeNotFound(f"replica {uid}/{snapshot} not found")
        for other in self.snapshots(uid):
            if other != snapshot:  # shares inodes with what becomes writable
                self._discard(self.pool.replicas_path(uid) / other)
        _rename(source, target, _RENAME_NOREPLACE, what=f"instance volume {name}")
        clear_baseline(target)  # its moment was on the source's clock
        with contextlib.suppress(OSError):
            self.pool.replicas_path(uid).rmdir()


def _prune(volume: Path, removed: bytes) -> None:
    """Delete from ``volume`` each listed path that is there with the listed kind; a
    path below a symlink is never touched (nothing outside the volume is)."""
    try:
        doomed = manifest.split_removed(removed)
    except ValueError as exc:
        raise BadStream(str(exc)) from exc
    root = os.fsencode(volume)
    for kind, path in doomed:
        parent, _, _ = path.rpartition(b"/")
        if parent and not _plain_directory(root, parent):
            continue
        full = root + b"/" + path
        try:
            mode = os.lstat(full).st_mode
        except FileNotFoundError:
            continue
        if manifest.kind_of(mode) != kind:
            continue
        if kind == b"d":
            _remove_tree(Path(os.fsdecode(full)))
        else:
            os.unlink(full)


def _plain_directory(root: bytes, path: bytes) -> bool:
    """Whether every component of ``path`` under ``root`` is a directory, not a link."""
    at = root
    for part in path.split(b"/"):
        at += b"/" + part
        try:
            if not stat.S_ISDIR(os.lstat(at).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def _link_copy(src: Path, dst: Path) -> None:
    """``cp -al``: new directories (owners, modes, xattrs, times kept), every other entry
    a hard link to ``src``'s."""
    try:
        proc = subprocess.run(["cp", "-al", "--no-target-directory", str(src), str(dst)],
                              capture_output=True, text=True, timeout=LINK_COPY_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"linking a copy of {src}: {exc}") from exc
    if proc.returncode != 0:
        raise StorageError(f"linking a copy of {src} failed: {proc.stderr.strip()[-2000:]}")


async def _tar(volume: Path, skip: list[bytes],
               emit: Callable[[bytes], Awaitable[None]]) -> list[tuple[bytes, bool]]:
    """Write a tar of ``volume`` but the files in ``skip`` (paths in it, each one that
    ``transfer.exact_pattern`` accepts) through ``emit``; returns what it archived (path,
    whether a directory). tar recurses from the root, so it never opens a path through
    a symlink. StorageError if tar fails or warns of more than the volume changing under
    it."""
    proc = await asyncio.create_subprocess_exec(
        "tar", *TAR_FLAGS, "--ignore-failed-read", "--blocking-factor=1",  # no padding
        "--verbose", "--quoting-style=escape",  # the listing goes to stderr
        "--anchored", "--no-wildcards", "--exclude-from=-",
        "-C", str(volume), "-cf", "-", ".",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "LC_ALL": "C"})
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    feeder = asyncio.create_task(_feed(proc.stdin, b"".join(b"./" + p + b"\n" for p in skip)))
    errors = asyncio.create_task(proc.stderr.read())  # read meanwhile: a full pipe blocks tar
    try:
        while chunk := await proc.stdout.read(CHUNK):
            await emit(chunk)
        await feeder
        rc = await proc.wait()
        stderr = await errors
        try:
            archived, said = split_listing(stderr)
        except ValueError as exc:
            raise StorageError(f"reading the volume at {volume}: {exc}") from exc
        odd = unexpected_warnings(said)
        if rc not in _TAR_OK or odd:
            raise StorageError(f"reading the volume at {volume} failed: "
                               f"{b' '.join(odd or [said]).decode(errors='replace')[-400:]}")
    finally:
        for task in (feeder, errors):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()  # drain the pipes: wait() alone hangs on a full one
    return archived


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
        stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # tar died: its exit status says why

