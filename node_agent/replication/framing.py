"""The replica stream: a header saying what it is, the payload in frames, an end mark.

::

    "CRPL" | u32 n | n bytes of JSON {"v", "kind", "uid", "parent", "snapshot", "removed"}
           | removed bytes (dir: the paths a delta deletes, ``manifest.removed``)
    then   | u32 len | len payload bytes          (len > 0; repeated)
           | u32 0   | u64 total payload bytes    (the end mark)

The payload is a tar archive (dir) or a ``btrfs send`` stream. Neither says by itself
whether its producer finished well: tar ends an archive properly even after it failed
to read a file, and a stream cut at a boundary can look whole. The source writes the end
mark only once its producer has exited cleanly, and a holder keeps a snapshot only after
reading it, so a cut or failed stream is never taken for a complete one. The header lets
the holder refuse a stream meant for another instance, snapshot or pool kind before it
writes anything. All integers are big-endian. Pure: no I/O.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from node_agent.replication.errors import BadStream

MAGIC = b"CRPL"
VERSION = 1
MAX_META = 64 << 10
MAX_REMOVED = 1 << 30
MAX_FRAME = 64 << 20
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Header:
    kind: str  # the source pool's driver: "dir" or "btrfs"
    uid: str
    parent: str | None  # None: the payload is the whole volume
    snapshot: str
    removed: bytes = b""


def encode_header(header: Header) -> bytes:
    meta = json.dumps({"v": VERSION, "kind": header.kind, "uid": header.uid,
                       "parent": header.parent, "snapshot": header.snapshot,
                       "removed": len(header.removed)}).encode()
    return MAGIC + _U32.pack(len(meta)) + meta + header.removed


def encode_frame(data: bytes) -> bytes:
    if not 0 < len(data) <= MAX_FRAME:
        raise ValueError(f"a frame holds 1 to {MAX_FRAME} bytes, not {len(data)}")
    return _U32.pack(len(data)) + data


def encode_end(total: int) -> bytes:
    return _U32.pack(0) + _U64.pack(total)


class Decoder:
    """Reads a stream fed in pieces of any size: ``header`` once it is whole, the payload
    as ``feed`` returns it, ``done`` once the end mark was read. BadStream on anything
    malformed, including a byte after the end mark."""

    def __init__(self) -> None:
        self.header: Header | None = None
        self.done = False
        self._buf = bytearray()
        self._meta: dict[str, object] | None = None
        self._total = 0

    def feed(self, data: bytes) -> list[bytes]:
        if self.done and data:
            raise BadStream("data after the end of the replica stream")
        self._buf += data
        out: list[bytes] = []
        while not self.done and (piece := self._step()) is not None:
            if piece:
                out.append(piece)
        if self.done and self._buf:
            raise BadStream("data after the end of the replica stream")
        return out

    def _step(self) -> bytes | None:
        """Consume one unit if it is whole: b"" for a header part, the payload of a frame;
        None when more bytes are needed."""
        if self._meta is None:
            return self._read_meta()
        if self.header is None:
            return self._read_removed()
        if len(self._buf) < 4:
            return None
        (size,) = _U32.unpack_from(self._buf)
        if size == 0:
            if len(self._buf) < 4 + 8:
                return None
            (total,) = _U64.unpack_from(self._buf, 4)
            if total != self._total:
                raise BadStream(f"the stream ended after {self._total} payload bytes, "
                                f"its end mark says {total}")
            del self._buf[:12]
            self.done = True
            return b""
        if size > MAX_FRAME:
            raise BadStream(f"a frame of {size} bytes is over the limit")
        if len(self._buf) < 4 + size:
            return None
        piece = bytes(self._buf[4:4 + size])
        del self._buf[:4 + size]
        self._total += size
        return piece

    def _read_meta(self) -> bytes | None:
        if self._buf[:4] != MAGIC[:len(self._buf[:4])]:
            raise BadStream("not a replica stream")
        if len(self._buf) < 8:
            return None
        (size,) = _U32.unpack_from(self._buf, 4)
        if size > MAX_META:
            raise BadStream(f"a stream header of {size} bytes is over the limit")
        if len(self._buf) < 8 + size:
            return None
        try:
            meta = json.loads(bytes(self._buf[8:8 + size]))
        except ValueError as exc:
            raise BadStream(f"unreadable stream header: {exc}") from exc
        _check_meta(meta)
        del self._buf[:8 + size]
        self._meta = meta
        return b""

    def _read_removed(self) -> bytes | None:
        assert self._meta is not None
        size = self._meta["removed"]
        assert isinstance(size, int)
        if len(self._buf) < size:
            return None
        meta = self._meta
        parent = meta["parent"]
        self.header = Header(str(meta["kind"]), str(meta["uid"]),
                             None if parent is None else str(parent), str(meta["snapshot"]),
                             bytes(self._buf[:size]))
        del self._buf[:size]
        return b""


def _check_meta(meta: object) -> None:
    if not isinstance(meta, dict) or meta.get("v") != VERSION:
        raise BadStream(f"unsupported replica stream header {str(meta)[:200]}")
    strings = all(isinstance(meta.get(k), str) for k in ("kind", "uid", "snapshot"))
    parent_ok = meta.get("parent") is None or isinstance(meta.get("parent"), str)
    size = meta.get("removed")
    if not (strings and parent_ok and isinstance(size, int) and not isinstance(size, bool)
            and 0 <= size <= MAX_REMOVED):
        raise BadStream(f"malformed replica stream header {str(meta)[:200]}")


class StreamReader:
    """A replica stream arriving as byte chunks: ``header()``, then ``payload()``, which
    ends only after the end mark and the end of the chunks, and raises BadStream if the
    chunks end before the mark. ``received``: the bytes read so far."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks.__aiter__()
        self._decoder = Decoder()
        self._pending: list[bytes] = []
        self.received = 0

    async def header(self) -> Header:
        while self._decoder.header is None:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                raise BadStream("the replica stream ended inside its header") from None
            self.received += len(chunk)
            self._pending.extend(self._decoder.feed(chunk))
        return self._decoder.header

    async def payload(self) -> AsyncIterator[bytes]:
        await self.header()
        while self._pending:
            yield self._pending.pop(0)
        async for chunk in self._chunks:
            self.received += len(chunk)
            for piece in self._decoder.feed(chunk):
                yield piece
        if not self._decoder.done:
            raise BadStream("the replica stream was cut short (no end mark)")


class FrameWriter:
    """Writes a replica stream through ``write``: ``header``, ``payload`` pieces, then
    ``end`` (only once the payload's producer has succeeded). ``sent``: bytes written."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self._payload = 0
        self.sent = 0

    async def header(self, header: Header) -> None:
        await self._send(encode_header(header))

    async def payload(self, data: bytes) -> None:
        for at in range(0, len(data), MAX_FRAME):
            piece = data[at:at + MAX_FRAME]
            await self._send(encode_frame(piece))
            self._payload += len(piece)

    async def end(self) -> None:
        await self._send(encode_end(self._payload))

    async def _send(self, data: bytes) -> None:
        await self._write(data)
        self.sent += len(data)
