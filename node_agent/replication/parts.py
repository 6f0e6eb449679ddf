"""The payload of a VM replica stream: a few named files, one after the other.

::

    u16 n | n bytes of name (UTF-8) | u64 size | size bytes      (repeated; then the end)

A VM's replica is its disk (a qcow2 file: the whole disk, or the clusters changed since
the parent) and, for a VM that boots through UEFI, its variable store. The reader takes
only names it is told to, each once, and only whole: a stream that ends inside a part
raises BadStream (the framing around it says whether the stream as a whole ended well).
Blocking, on file objects (a pipe's end in the stores: ``pipes.pump_from``/``pump_into``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import BinaryIO

from node_agent.replication.errors import BadStream

CHUNK = 1 << 20
MAX_NAME = 255
MAX_PART = 1 << 44  # 16 TiB
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


def part_header(name: str, size: int) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) <= MAX_NAME or not 0 <= size <= MAX_PART:
        raise ValueError(f"cannot send part {name!r} of {size} bytes")
    return _U16.pack(len(raw)) + raw + _U64.pack(size)


def write_parts(out: BinaryIO, files: Iterable[tuple[str, Path]]) -> int:
    """Write each (name, path) as a part; the payload bytes written. The size is taken
    once the file is open: a file that changes meanwhile (it must not) fails here."""
    sent = 0
    for name, path in files:
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            out.write(part_header(name, size))
            left = size
            while left:
                data = src.read(min(CHUNK, left))
                if not data:
                    raise OSError(f"{path} shrank while it was sent")
                out.write(data)
                left -= len(data)
        sent += size
    out.flush()
    return sent


def read_parts(src: BinaryIO, into: Path, allowed: Collection[str]) -> list[str]:
    """Write each part of ``src`` into a new file ``into/<name>`` (mode 0600); the names
    read, in order. BadStream for a name not ``allowed`` or repeated, or a stream that
    ends inside a part."""
    names: list[str] = []
    while True:
        head = src.read(_U16.size)
        if not head:
            return names
        (length,) = _U16.unpack(_exactly(src, _U16.size, head))
        try:
            name = _exactly(src, length).decode()
        except UnicodeDecodeError as exc:
            raise BadStream("a part with an undecodable name") from exc
        if name not in allowed or name in names:
            raise BadStream(f"unexpected part {name[:80]!r} in a VM replica stream")
        (size,) = _U64.unpack(_exactly(src, _U64.size))
        if size > MAX_PART:
            raise BadStream(f"part {name} of {size} bytes is over the limit")
        fd = os.open(into / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as dst:
            left = size
            while left:
                data = src.read(min(CHUNK, left))
                if not data:
                    raise BadStream(f"the VM replica stream ended inside part {name}")
                dst.write(data)
                left -= len(data)
        names.append(name)


def _exactly(src: BinaryIO, size: int, start: bytes = b"") -> bytes:
    data = start
    while len(data) < size:
        more = src.read(size - len(data))
        if not more:
            raise BadStream("the VM replica stream ended inside a part header")
        data += more
    return data
