"""Pure helpers for VM images: an initramfs writer (cpio "newc", gzip) and kernel-module
dependency order.

The archive is built in memory, without ``cpio`` or root: device nodes are just headers.
Every entry gets the same mtime, and gzip's header mtime is fixed, so the same inputs give
the same bytes.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ImageError

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` is the file content or the symlink target."""

    name: str
    mode: int  # includes the file type bits (stat.S_IFREG | 0o755, ...)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: Entry, mtime: int, name: bytes) -> bytes:
    fields = (ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, mtime,
              len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name) + 1, 0)
    head = _MAGIC + b"".join(b"%08X" % value for value in fields)
    return head + name + b"\0" + _pad(len(head) + len(name) + 1)


def cpio_newc(entries: Iterable[Entry], mtime: int) -> bytes:
    """The uncompressed archive (parents must come before their children)."""
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        name = entry.name.strip("/").encode()
        if not name or b".." in name.split(b"/"):
            raise ImageError(f"invalid initramfs entry name {entry.name!r}")
        out += _header(ino, entry, mtime, name) + entry.data + _pad(len(entry.data))
    out += _header(0, Entry(_TRAILER, 0), 0, _TRAILER.encode())
    return bytes(out)


def initramfs(entries: Iterable[Entry], mtime: int) -> bytes:
    """A gzip'd newc archive, as the kernel's ``initrd`` unpacker wants it."""
    return gzip.compress(cpio_newc(entries, mtime), compresslevel=9, mtime=0)


def read_cpio_newc(data: bytes) -> dict[str, Entry]:
    """Parse a newc archive back (for tests and checks); raises ImageError if malformed."""
    found: dict[str, Entry] = {}
    pos = 0
    while True:
        head = data[pos:pos + 110]
        if len(head) < 110 or head[:6] != _MAGIC:
            raise ImageError(f"bad cpio header at offset {pos}")
        values = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = values[1], values[6], values[11]
        name_end = pos + 110 + namesize
        name = data[pos + 110:name_end - 1].decode()
        start = name_end + (-name_end % 4)
        if name == _TRAILER:
            return found
        found[name] = Entry(name, mode, data[start:start + size], (values[9], values[10]))
        pos = start + size + (-(start + size) % 4)


def modinfo_depends(module: bytes) -> list[str]:
    """The ``depends=`` list from a module's .modinfo strings (names use underscores)."""
    marker = b"\0depends="
    at = module.find(marker)
    if at < 0:
        return []
    end = module.find(b"\0", at + len(marker))
    text = module[at + len(marker):end].decode(errors="replace")
    return [name.replace("-", "_") for name in text.split(",") if name]


def load_order(wanted: Iterable[str], depends: Mapping[str, list[str]]) -> list[str]:
    """``wanted`` and everything they depend on, each after its dependencies.

    Raises ImageError for an unknown module or a dependency cycle."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ImageError(f"kernel module dependency cycle through {name}")
        if name not in depends:
            raise ImageError(f"kernel module {name} not found in the kernel package")
        visiting.add(name)
        for dep in depends[name]:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order
