"""What a dir pool's source remembers of each replica it sent, and what the next delta
must carry.

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

``scan`` walks the volume (blocking); the rest is pure.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
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
        """The entry as ``transfer.prune_to_listing`` lists it: kind, then path."""
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


def listing(entries: Iterable[Entry]) -> bytes:
    """The holder's prune list: every entry but the root, NUL-separated."""
    return b"\0".join(e.key for e in entries if e.path != ROOT)


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
