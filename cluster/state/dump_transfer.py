"""A leader's dump sent to a lagging follower: chunks that carry their offset, and a
dump that counts only once it has loaded.

This replaces pysyncobj 0.3.17's ``Serializer`` (``_PromptSyncObj`` puts it in place;
pysyncobj has no hook for the transfer), because of two faults in it:

- A chunk carries no offset. The leader reads the next chunk from the dump file as it
  queues the message; when the connection drops, the queued messages are thrown away
  but the read offset stays where it was. A drop and reconnect within one tick (before
  the leader notices and cancels the transfer) leaves a hole in the follower's file.
  Here every chunk says where it starts (``Chunk``); the follower refuses one that is
  not the next it expects and asks the leader to start again from 0 (``restart_wanted``,
  sent by ``_PromptSyncObj`` as a ``corral_dump_restart`` message).
- The follower renamed the received file over its good dump before checking it, then
  only logged a failed load and still answered success. Here the received file is
  loaded into a scratch state first (checksum, then unpickling: ``dumps.read_dump``);
  only a dump that loads replaces the current file, and the loaded state is the one
  installed. A dump that does not load is deleted and not acknowledged: the follower
  asks for it again, and its previous dump and replica stay as they were.

A local dump child still running when a leader's dump is installed is killed first
(``ForkingDump.discard``): it would otherwise rename its older dump over the new one.

Unlike pysyncobj's, a leader sends its current dump while it writes a new one (the new
one is renamed into place; the file being sent stays open): at 1M instances a dump takes
about 40 s, and a lagging follower need not wait for it. A dump older than the leader's
log start is simply followed by the next one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cluster.state.dumps import ForkingDump, read_dump
from cluster.state.journal import fsync_directory

log = logging.getLogger(__name__)

# What a leader sends in ``append_entries['serialized']``: data, first, last, offset.
Chunk = tuple[bytes, bool, bool, int]
RESTART = "corral_dump_restart"  # the message a follower sends to have the dump resent


@dataclass
class _Sending:
    file: BinaryIO
    offset: int = 0


class DumpTransfer:
    """pysyncobj's ``Serializer`` interface (its method names) over a ``ForkingDump``."""

    def __init__(self, dump: ForkingDump, chunk_bytes: int) -> None:
        self._dump = dump
        self.chunk_bytes = chunk_bytes
        self._entry = 0  # the log index of the dump being written
        self._sending: dict[Any, _Sending] = {}
        self._incoming: BinaryIO | None = None
        self._received = 0  # bytes of the incoming dump written so far
        self.restart_wanted = False  # a chunk or a whole dump was refused
        self._awaiting_first = False  # refused since the last first chunk: restart asked
        self.refusals = 0  # chunks and dumps refused since start (an observable)
        self.load_failed = False  # the last load of a dump into the replica failed

    @property
    def _incoming_path(self) -> Path:
        return self._dump.path.with_name(self._dump.path.name + ".1.tmp")

    # Writing the local dump (pysyncobj's log compaction).

    def checkSerializing(self) -> tuple[int, int | None]:  # noqa: N802 - pysyncobj's name
        return self._dump.check(), self._entry

    def serialize(self, data: tuple[Any, ...], entry: int) -> None:
        if self._dump.busy:
            return
        self._entry = entry
        self._dump.serialize(str(self._dump.path) + ".tmp", data[1:])

    def deserialize(self) -> tuple[Any, ...]:
        """Load the current dump into the replica: ``(None, last entry, previous entry,
        cluster)`` for pysyncobj."""
        try:
            meta = self._dump.deserialize(str(self._dump.path))
        except Exception:
            self.load_failed = True
            raise
        self.load_failed = False
        return (None, *meta)

    # Sending (the leader).

    def getTransmissionData(self, node: Any) -> Chunk | None:  # noqa: N802
        """The next chunk of the dump for ``node`` (the current dump file, opened at the
        first chunk: a dump written meanwhile is renamed into place and does not change
        the file being sent). None when there is no dump to send."""
        sending = self._sending.get(node)
        if sending is None:
            try:
                sending = self._sending[node] = _Sending(open(self._dump.path, "rb"))  # noqa: SIM115
            except OSError as exc:
                log.warning("no dump to send to %s: %s", node, exc)
                return None
        offset = sending.offset
        try:
            data = sending.file.read(self.chunk_bytes)
        except OSError:
            log.exception("reading the dump for %s failed", node)
            self.cancelTransmisstion(node)
            return None
        sending.offset += len(data)
        last = not data
        if last:
            self.cancelTransmisstion(node)
        return data, offset == 0, last, offset

    def cancelTransmisstion(self, node: Any) -> None:  # noqa: N802 - pysyncobj's spelling
        """Forget the transfer to ``node``: the next chunk it gets is the first."""
        sending = self._sending.pop(node, None)
        if sending is not None:
            sending.file.close()

    # Receiving (a lagging follower).

    def setTransmissionData(self, chunk: Any) -> bool:  # noqa: N802
        """Take one chunk; True once a whole dump has arrived, loaded, and replaced the
        current one (pysyncobj then installs it and acknowledges). A chunk that is not
        the next one, or a dump that does not load, sets ``restart_wanted``."""
        if not chunk:
            return False
        data, first, last, offset = _parse(chunk)
        if first:
            self._open_incoming()
        elif self._incoming is None or (offset is not None and offset != self._received):
            self._refuse_chunk(offset, last)
            return False
        assert self._incoming is not None
        try:
            self._incoming.write(data)
        except OSError:
            log.exception("writing the incoming dump failed")
            self._drop_incoming()
            self._refuse("the incoming dump could not be written")
            return False
        self._received += len(data)
        return self._finish() if last else False

    def _refuse_chunk(self, offset: int | None, last: bool) -> None:
        """A chunk after a hole: ask for the dump from the start. The chunks already
        on their way after it are dropped quietly (one request is enough), except a
        last one: the request may have been lost with a dropped connection."""
        if not self._awaiting_first or last:
            self._refuse(f"a dump chunk at offset {offset} after {self._received} bytes")
        self._awaiting_first = True

    def _open_incoming(self) -> None:
        self._drop_incoming()
        self._awaiting_first = False
        self._incoming = open(self._incoming_path, "wb")  # noqa: SIM115
        self._received = 0

    def _finish(self) -> bool:
        """Load the whole received dump; only if it loads, make it the current one."""
        assert self._incoming is not None
        incoming, self._incoming = self._incoming, None
        incoming.flush()
        os.fsync(incoming.fileno())
        incoming.close()
        try:
            state, meta = read_dump(self._incoming_path)
        except Exception as exc:  # noqa: BLE001 - any failure to load refuses the dump
            self._incoming_path.unlink(missing_ok=True)
            self._refuse(f"the received dump ({self._received} bytes) does not load: {exc}")
            return False
        self._dump.discard()  # an older local dump must not be renamed over this one
        os.replace(self._incoming_path, self._dump.path)
        fsync_directory(self._dump.path.parent)
        self._dump.verified(self._dump.path, state, meta)
        return True

    def _drop_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None
        self._received = 0

    def _refuse(self, reason: str) -> None:
        log.warning("%s: refused, asking the leader to send the dump again", reason)
        self._drop_incoming()
        self.restart_wanted = True
        self.refusals += 1

    def take_restart(self) -> bool:
        """Whether to ask the leader for the dump again (once per refusal)."""
        wanted, self.restart_wanted = self.restart_wanted, False
        return wanted

    def close(self) -> None:
        for node in list(self._sending):
            self.cancelTransmisstion(node)
        self._drop_incoming()


def _parse(chunk: Any) -> tuple[bytes, bool, bool, int | None]:
    """A chunk from corral (with its offset) or from pysyncobj's own Serializer (a
    member not yet upgraded: no offset, taken in order as before)."""
    if len(chunk) == 4:
        data, first, last, offset = chunk
        return bytes(data), bool(first), bool(last), int(offset)
    data, first, last = chunk
    return bytes(data), bool(first), bool(last), None

