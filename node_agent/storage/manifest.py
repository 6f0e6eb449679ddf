"""What a sender of a volume remembers of what it sent, and what the next delta must
carry: for the replicas of a dir pool (``replication/dir.py``) and for the pre-copy of a
move (``storage/transfer.py``).

A delta cannot be chosen by change time alone (``tar --newer``): moving a directory
changes the change time of the directory only, so the files below it would never reach
the holder, which prunes the old path away. Nor by path alone: a directory swapped for
another one with the same file names (``rm -r d; mv d.new d``) keeps every path. So the
source keeps, for each snapshot it sent, a *manifest*: every path of the volume with its
kind, inode number and change time. The next delta against that snapshot carries every
path that is new, has another inode, or another change time, and every path whose
change time is within ``SLACK_NS`` of the parent's moment or later (a write begun just
before the walk may still have been under way while tar read the file), plus every
other name of a hard-linked file it carries, so links stay links.

The holder deletes what the source's walk no longer finds (``removed``): it holds no
path its parent's manifest lacks, so that list is all it needs, not every path again.
A tar of a running instance's volume may find a path made after the walk, so that
manifest holds what the tar archived as well (``with_archived``).

A tree read while it changes (a running container's) is known to have been read as a
walk before the read saw it only where ``settled`` says so: see there.
``scan`` walks the volume (blocking); the rest is pure.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

SLACK_NS = 1_000_000_000
ROOT = b"."
_RECORD = struct.Struct(">QqI")


@dataclass(frozen=True, slots=True)
class Entry:
    path: bytes  # relative to the volume; b"." for the volume itself
    kind: bytes  # b"d" directory, b"l" symlink, b"f" anything else
    ino: int
    ctime_ns: int
    nlink: int = 1

    @property
    def key(self) -> bytes:
        """Kind, then path: a path whose kind changed is another entry."""
        return self.kind + self.path


def kind_of(mode: int) -> bytes:
    return b"d" if stat.S_ISDIR(mode) else b"l" if stat.S_ISLNK(mode) else b"f"


def scan(root: Path) -> list[Entry]:
    """Every path under ``root`` and ``root`` itself, each directory before what is in
    it; symlinks are not followed, and a path that vanishes during the walk is left out
    (blocking)."""
    st = os.lstat(root)
    entries = [Entry(ROOT, kind_of(st.st_mode), st.st_ino, st.st_ctime_ns, st.st_nlink)]
    entries.extend(_walk(os.fsencode(root), b""))
    return entries


def _walk(directory: bytes, prefix: bytes) -> Iterator[Entry]:
    try:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for child in children:
        try:
            st = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = prefix + child.name
        yield Entry(path, kind_of(st.st_mode), st.st_ino, st.st_ctime_ns, st.st_nlink)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(child.path, path + b"/")


def removed(entries: Iterable[Entry], parent: Mapping[bytes, tuple[int, int]]) -> bytes:
    """The keys of ``parent`` that are gone (or changed kind), NUL-separated, each
    directory before what was in it: what the holder deletes from its copy of the parent
    (it holds no path its parent's manifest lacks)."""
    now = {e.key for e in entries}
    gone = sorted((k for k in parent if k not in now and k[1:] != ROOT), key=lambda k: k[1:])
    return b"\0".join(gone)


def split_removed(data: bytes) -> list[tuple[bytes, bytes]]:
    """``removed`` as (kind, path) pairs. ValueError for a path that could leave the
    volume (absolute, empty parts, ``.`` or ``..``)."""
    out = []
    for key in data.split(b"\0") if data else []:
        kind, path = key[:1], key[1:]
        parts = path.split(b"/")
        if kind not in (b"d", b"l", b"f") or any(p in (b"", b".", b"..") for p in parts):
            raise ValueError(f"bad path to remove: {key[:200]!r}")
        out.append((kind, path))
    return out


def to_send(entries: list[Entry], parent: Mapping[bytes, tuple[int, int]] | None,
            parent_moment_ns: int | None) -> list[bytes]:
    """The paths a delta against ``parent`` (a decoded manifest; None: send all) must
    carry, in walk order. The root is always carried (its owner and mode)."""
    if parent is None:
        return [e.path for e in entries]
    since = None if parent_moment_ns is None else parent_moment_ns - SLACK_NS

    def changed(e: Entry) -> bool:
        if e.path == ROOT or parent.get(e.key) != (e.ino, e.ctime_ns):
            return True
        return since is not None and e.ctime_ns >= since

    chosen = [changed(e) for e in entries]
    linked = {e.ino for e, c in zip(entries, chosen, strict=True)
              if c and e.kind == b"f" and e.nlink > 1}
    return [e.path for e, c in zip(entries, chosen, strict=True)
            if c or (e.kind == b"f" and e.ino in linked)]


def with_archived(entries: list[Entry], archived: Iterable[tuple[bytes, bool]],
                  ) -> list[Entry]:
    """The manifest of what a holder has once it unpacked a tar read after the walk that
    found ``entries``: those, and each path the tar archived (with whether it is a
    directory) that the walk did not find, as made between the walk and the read. Such
    a path is kept under each kind it may have (a directory; else a file or a symlink)
    with inode 0, which no file has: the next delta sends it again if it is still
    there, and deletes it from the holder if it is gone (``removed``)."""
    keys = {e.key for e in entries}
    extra = []
    for path, directory in archived:
        for kind in (b"d",) if directory else (b"f", b"l"):
            if kind + path not in keys:
                keys.add(kind + path)
                extra.append(Entry(path, kind, 0, 0))
    return [*entries, *extra]


def under(entries: Iterable[Entry], prefix: bytes) -> list[Entry]:
    """``entries`` of a tree seen from the directory above it, in which the tree is
    ``prefix``: the root becomes ``prefix``, every other path ``prefix/path``."""
    return [replace(e, path=_under(e.path, prefix)) for e in entries]


def held_under(held: Mapping[bytes, tuple[int, int]], prefix: bytes,
               ) -> dict[bytes, tuple[int, int]]:
    """A decoded manifest seen from above its tree, as ``under``."""
    return {key[:1] + _under(key[1:], prefix): value for key, value in held.items()}


def _under(path: bytes, prefix: bytes) -> bytes:
    return prefix if path == ROOT else prefix + b"/" + path


def settled(before: list[Entry], after: Iterable[Entry], moment_ns: int) -> list[Entry]:
    """The entries of ``before`` that a read of the tree between two walks (``before``
    begun after ``moment_ns``, ``after`` once the read ended) is known to have read as
    ``before`` has them, while the tree changed meanwhile.

    An entry is settled when it is the same in both walks (kind, inode, change time), and
    so is every directory above it that ``before`` holds, each changed before
    ``moment_ns - SLACK_NS`` as well. Then no name was added to, removed from or renamed
    in any of those directories while the tree was read (each would change a
    directory's change time to a moment after ``moment_ns``), so the read found this
    very inode at this path. An entry of a directory moved away and back, replaced by a
    symlink for a while, or that vanished while it was read, is not settled. ``before``
    must hold each directory before what is in it (as ``scan``)."""
    now = {e.key: (e.ino, e.ctime_ns) for e in after}
    walked = {e.path for e in before if e.kind == b"d"}
    steady: set[bytes] = set()  # directories whose names did not change during the read
    since = moment_ns - SLACK_NS
    out = []
    for e in before:
        parent = _parent(e.path)
        if parent is not None and parent in walked and parent not in steady:
            continue
        if now.get(e.key) != (e.ino, e.ctime_ns):
            continue
        out.append(e)
        if e.kind == b"d" and e.ctime_ns < since:
            steady.add(e.path)
    return out


def _parent(path: bytes) -> bytes | None:
    if path == ROOT:
        return None
    parent = path.rpartition(b"/")[0]
    return parent or ROOT


def encode(entries: Iterable[Entry]) -> bytes:
    return b"".join(_RECORD.pack(e.ino, e.ctime_ns, len(e.key)) + e.key for e in entries)


def decode(data: bytes) -> dict[bytes, tuple[int, int]]:
    """``{key: (inode, change time)}``. ValueError if ``data`` is no manifest."""
    out: dict[bytes, tuple[int, int]] = {}
    view, at = memoryview(data), 0
    while at < len(data):
        if at + _RECORD.size > len(data):
            raise ValueError("a manifest record is cut short")
        ino, ctime_ns, size = _RECORD.unpack_from(view, at)
        at += _RECORD.size
        if size == 0 or at + size > len(data) or bytes(view[at:at + 1]) not in (b"d", b"l", b"f"):
            raise ValueError("a manifest record is malformed")
        out[bytes(view[at:at + size])] = (ino, ctime_ns)
        at += size
    return out
