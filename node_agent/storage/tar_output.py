"""What GNU tar says on stderr while it archives a volume that may change under it: which
paths it archived, and whether its warnings say more than that the tree changed.

A send that tolerates a tree changing under it (a running instance's volume) runs tar
with ``--ignore-failed-read`` in the C locale: a path that vanished is then a warning,
not a failure, but so is a file tar could not open or read, which the receiver would
silently lack. So the sender judges every warning (``unexpected_warnings``).

A replica send also runs it ``--verbose --quoting-style=escape`` over ``.`` (the volume
root) with the archive on stdout: tar then lists each path it archives on stderr, one
line each, ``./`` before it, ``/`` after a directory, every byte that is not printable
ASCII (and the backslash) escaped as in C; its diagnostics begin with ``tar: ``. Pure.
"""

from __future__ import annotations

import re

# What tar reports of a tree that changes while it reads it (LC_ALL=C). Each such path
# differs between the walks before and after, so ``manifest.settled`` leaves it out.
_HARMLESS = re.compile(
    rb"tar: .*: (?:file changed as we read it|File removed before we read it"
    rb"|socket ignored|File shrank by \d+ bytes?; padding with zeros"
    rb"|Warning: Cannot \w+: (?:No such file or directory|Not a directory))")
_LISTED = b"./"
_ESCAPE = re.compile(rb"\\(?:([0-3][0-7]{2})|(.)|\Z)", re.DOTALL)
_SIMPLE = {b"\\": b"\\", b"a": b"\a", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r",
           b"t": b"\t", b"v": b"\v"}


def unexpected_warnings(stderr: bytes) -> list[bytes]:
    """The lines of tar's ``stderr`` that say more than that the tree changed while it
    was read (an unreadable file would be missing from the receiver's copy)."""
    return [line for line in stderr.splitlines() if not _HARMLESS.fullmatch(line)]


def split_listing(stderr: bytes) -> tuple[list[tuple[bytes, bool]], bytes]:
    """The paths a ``--verbose`` tar of ``.`` archived, each relative to ``.`` with
    whether it is a directory (``.`` itself left out), and the rest of ``stderr``.
    ValueError for a listed name that is not escaped as tar escapes one."""
    archived: list[tuple[bytes, bool]] = []
    rest: list[bytes] = []
    for line in stderr.split(b"\n"):
        if not line.startswith(_LISTED):
            if line:
                rest.append(line)
            continue
        name = unquote(line[len(_LISTED):])
        if name:
            directory = name.endswith(b"/")
            archived.append((name[:-1] if directory else name, directory))
    return archived, b"\n".join(rest)


def unquote(quoted: bytes) -> bytes:
    """A name as tar's ``escape`` quoting style wrote it, unescaped. ValueError for an
    escape that style never writes."""
    def one(match: re.Match[bytes]) -> bytes:
        octal, char = match.groups()
        if octal is not None:
            return bytes([int(octal, 8)])
        if char is None or char not in _SIMPLE:
            raise ValueError(f"tar listed a name with an unknown escape: {quoted[:200]!r}")
        return _SIMPLE[char]

    return _ESCAPE.sub(one, quoted)
