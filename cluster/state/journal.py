"""The Raft journal on disk: checksummed records, fsynced in groups, rewritten by rename.

pysyncobj 0.3.17's ``FileJournal`` keeps its records in an mmap that is never flushed,
renames its term/vote file without an fsync, rewrites the live file in place when it
compacts (a kill -9 half-way loses acknowledged entries) and has no checksum, so a
damaged record surfaces as an unpickling error at apply and the member serves whatever
prefix it could apply (issue 13). ``DurableJournal`` replaces it with the same interface
(pysyncobj calls ``createJournal`` in ``SyncObj.__init__``, before its tick thread
starts, so there is no hook to pass a journal in: ``install`` swaps that module global
for one that builds a ``DurableJournal`` when the configured path is a ``JournalPath``
and pysyncobj's own journal otherwise). Like etcd's WAL:

- Every record carries a CRC-32 of its length and payload. Replay checks each one. A
  torn tail (the last record cut short, or zeros after the last good record: what a
  crash during an append leaves) is cut off; any other bad record raises
  ``ReplicaDamaged`` with the file and offset, and the member must not serve.
- Appends are plain ``write``s; ``sync`` makes every record appended since the last
  call durable with one ``fdatasync`` (group commit). The caller (raft.py) calls it
  before it reports entries as stored: before the leader counts itself towards a
  commit and before a follower answers ``append_entries``.
- ``clear`` writes a new file, fsyncs it, renames it over the journal and fsyncs the
  directory; the live file is only ever appended to or cut at its end (an uncommitted
  suffix that the leader replaces). Compaction records where the live records start in
  the meta file and frees the blocks before that (a hole); the next start rewrites the
  file without them.
- The term, vote and commit index go to ``<journal>.meta`` by write, fsync, rename,
  fsync of the directory, with a checksum too.

A journal or meta file written by pysyncobj's ``FileJournal`` is read once and
rewritten in this format.

Layout: ``MAGIC``, then records of ``<length:u32><crc32:u32><index:u64><term:u64><command>``
where ``length`` counts the index, term and command bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj import journal as pysyncobj_journal
from pysyncobj import syncobj as pysyncobj_syncobj

from cluster.state.errors import ReplicaDamaged
from cluster.state.punch import punch_hole

MAGIC = b"CORRAL-JOURNAL-1"
FIRST_OFFSET = "journalFirstOffset"  # meta key: where the live records start (a cut log)
FILE_ID = "journalInode"  # meta key: the journal file the first offset is for
META_MAGIC = b"CORRAL-META-1\n"
_HEAD = struct.Struct("<II")  # length, crc32
_ENTRY = struct.Struct("<QQ")  # index, term
_LEGACY_MAGIC = b"PYSYNCOBJ"
_LEGACY_FIRST_RECORD = 40  # pysyncobj FileJournal: name 24 + version 8 + format 4 + end 4
_LEGACY_END_OFFSET = 36

Entry = tuple[bytes, int, int]  # (command, index, term), as pysyncobj keeps them


FsyncObserver = Callable[[float], None]  # called with the seconds of each group fdatasync


class JournalPath(str):
    """A ``journalFile`` setting that asks for a ``DurableJournal`` (see ``install``),
    with what to tell of each fsync: pysyncobj builds the journal inside
    ``SyncObj.__init__``, where its tick thread starts, so the setting is the only way
    in before the first sync."""

    on_fsync: FsyncObserver | None = None

    def __new__(cls, path: object, on_fsync: FsyncObserver | None = None) -> JournalPath:
        made = super().__new__(cls, path)
        made.on_fsync = on_fsync
        return made


def install() -> None:
    """Make pysyncobj build a ``DurableJournal`` for every ``JournalPath`` (idempotent)."""
    original = pysyncobj_journal.createJournal

    def create_journal(journal_file: str | None = None) -> pysyncobj_journal.Journal:
        if isinstance(journal_file, JournalPath):
            return DurableJournal(journal_file, on_fsync=journal_file.on_fsync)
        return original(journal_file)

    if not getattr(pysyncobj_syncobj.createJournal, "corral", False):
        create_journal.corral = True  # type: ignore[attr-defined]
        pysyncobj_syncobj.createJournal = create_journal


def encode(command: bytes, index: int, term: int) -> bytes:
    """One record: its header (length and CRC-32) and payload."""
    payload = _ENTRY.pack(index, term) + command
    length = len(payload)
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<I", length)))
    return _HEAD.pack(length, crc) + payload


@dataclass
class Replayed:
    """What replay found: the entries, where each record starts, where the good part
    ends, and whether a torn tail was cut off there."""

    entries: list[Entry] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    end: int = len(MAGIC)
    torn: bool = False


def replay(data: bytes, path: str) -> Replayed:
    """Decode and check every record of a journal's bytes.

    Raises ``ReplicaDamaged`` for a bad header or for a bad record followed by other
    data; a bad record at the very end (cut short, a CRC that fails on the last
    record, or zeros to the end of the file) is a torn tail, reported in ``torn``."""
    if not data.startswith(MAGIC):
        raise ReplicaDamaged(path, 0, "not a corral journal (bad header)")
    found = Replayed()
    offset = len(MAGIC)
    while offset < len(data):
        record = _decode(data, offset)
        if record is None:
            if _torn(data, offset):
                found.torn = True
                break
            raise ReplicaDamaged(path, offset, "record checksum does not match")
        command, index, term, size = record
        if found.entries and index != found.entries[-1][1] + 1:
            raise ReplicaDamaged(path, offset, f"index {index} does not follow "
                                               f"{found.entries[-1][1]}")
        found.entries.append((command, index, term))
        found.offsets.append(offset)
        offset += size
    found.end = offset
    return found


def _decode(data: bytes, offset: int) -> tuple[bytes, int, int, int] | None:
    """The record at ``offset`` (command, index, term, size), or None if it is bad."""
    if offset + _HEAD.size > len(data):
        return None
    length, crc = _HEAD.unpack_from(data, offset)
    start = offset + _HEAD.size
    if length < _ENTRY.size or start + length > len(data):
        return None
    payload = data[start:start + length]
    if zlib.crc32(payload, zlib.crc32(struct.pack("<I", length))) != crc:
        return None
    index, term = _ENTRY.unpack_from(payload)
    return payload[_ENTRY.size:], index, term, _HEAD.size + length


def _torn(data: bytes, offset: int) -> bool:
    """A bad record at ``offset`` is a torn append if nothing follows it: its length
    reaches the end of the file, or only zeros remain (the file grew, the data did not
    reach the disk). A bad record with data after it is damage, not a torn write (a
    crash that persisted a later append of the same unsynced group but not this one is
    reported as damage too: the safe side)."""
    rest = data[offset:]
    if not rest.strip(b"\0"):
        return True
    if len(rest) < _HEAD.size:
        return True
    length, _ = _HEAD.unpack_from(rest)
    return _HEAD.size + length >= len(rest)


def replay_legacy(data: bytes) -> list[Entry]:
    """The entries of a journal written by pysyncobj's ``FileJournal`` (no checksums)."""
    (end,) = struct.unpack_from("<I", data, _LEGACY_END_OFFSET)
    entries: list[Entry] = []
    offset = _LEGACY_FIRST_RECORD
    while offset < end:
        (size,) = struct.unpack_from("<I", data, offset)
        record = data[offset + 4:offset + 4 + size]
        index, term = _ENTRY.unpack_from(record)
        entries.append((bytes(record[_ENTRY.size:]), index, term))
        offset += size + 8
    return entries


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably: a temporary file, fsync,
    rename, fsync of the directory. A crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except OSError:  # e.g. ENOSPC: the old file stays, and no half-written copy
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_directory(path.parent)


class MetaFile:
    """Term, vote and commit index, replaced atomically with a checksum."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The stored values ({} when there is no file yet); raises ``ReplicaDamaged``
        when the file does not check (a lost vote could let this member vote twice)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        if not data.startswith(META_MAGIC):
            return self._load_legacy(data)
        body, crc = data[len(META_MAGIC):-4], data[-4:]
        if len(data) < len(META_MAGIC) + 4 or struct.pack("<I", zlib.crc32(body)) != crc:
            raise ReplicaDamaged(str(self.path), 0, "meta checksum does not match")
        loaded: dict[str, Any] = json.loads(body)
        return loaded

    def _load_legacy(self, data: bytes) -> dict[str, Any]:
        try:
            loaded = pickle.loads(data)  # written by pysyncobj's MetaStorer, ours alone
        except Exception as exc:
            raise ReplicaDamaged(str(self.path), 0, "meta file does not load") from exc
        if not isinstance(loaded, dict):
            raise ReplicaDamaged(str(self.path), 0, "meta file holds no mapping")
        return loaded

    def store(self, meta: dict[str, Any]) -> None:
        body = json.dumps(meta, sort_keys=True).encode()
        replace_file(self.path, META_MAGIC + body + struct.pack("<I", zlib.crc32(body)))


class DurableJournal(pysyncobj_journal.Journal):  # type: ignore[misc]
    """pysyncobj's journal interface over an append-only file of checksummed records.

    All entries stay in memory too (as in pysyncobj's ``FileJournal``); the file is
    read only at start. ``syncs`` counts the fdatasyncs and ``durable_index`` is the
    index of the last entry they covered: observable, so tests can show that nothing
    is acknowledged before it is on disk. ``on_fsync`` hears the seconds of each group
    fdatasync (the Raft store's WAL fsync histogram)."""

    def __init__(self, path: str, on_fsync: FsyncObserver | None = None) -> None:
        self.path = Path(path)
        self._on_fsync = on_fsync
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        self._fd = -1
        self._end = len(MAGIC)  # where the next record goes
        self._dirty = False
        self.syncs = 0
        self.durable_index = 0
        self._meta_file = MetaFile(self.path.with_name(self.path.name + ".meta"))
        self._meta = self._meta_file.load()
        self._meta_saved = True
        self._open()

    def _open(self) -> None:
        """Replay the file (cutting a torn tail off), converting a pysyncobj journal.
        Records before the first live one (``deleteEntriesTo``) are skipped, and the
        file is then rewritten without them."""
        try:
            data, skipped = self._read_live()
        except FileNotFoundError:
            data, skipped = b"", 0
        if not data:
            self._rewrite([])
            return
        if data.startswith(_LEGACY_MAGIC):
            self._rewrite(replay_legacy(data))
            return
        found = replay(data, str(self.path))
        if skipped:  # at start, before Raft runs: drop the dead prefix for good
            self._rewrite(found.entries)
            return
        self._entries, self._offsets, self._end = found.entries, found.offsets, found.end
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        if found.torn:
            os.ftruncate(self._fd, found.end)
            os.fsync(self._fd)
        self.durable_index = self._entries[-1][1] if self._entries else 0

    def _read_live(self) -> tuple[bytes, int]:
        """The journal's header followed by its live records, and how many bytes of
        dead records were skipped between them. The first live offset counts only for
        the file it was stored for (its inode): a file renamed over it starts at its
        header."""
        with open(self.path, "rb") as source:
            first = int(self._meta.get(FIRST_OFFSET, 0))
            if first <= len(MAGIC) or self._meta.get(FILE_ID) != os.fstat(source.fileno()).st_ino:
                return source.read(), 0
            head = source.read(len(MAGIC))
            source.seek(first)
            return head + source.read(), first - len(MAGIC)

    def _rewrite(self, entries: list[Entry]) -> None:
        """Make ``entries`` the whole journal: a new file renamed into place, then
        reopened for appends. The live file is never edited in place."""
        chunks, offsets, offset = [MAGIC], [], len(MAGIC)
        for entry in entries:
            record = encode(*entry)
            chunks.append(record)
            offsets.append(offset)
            offset += len(record)
        replace_file(self.path, b"".join(chunks))
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        if self._meta.pop(FIRST_OFFSET, None) is not None:  # the new file has no dead part
            self._meta.pop(FILE_ID, None)
            self._store_meta()
        self._entries, self._offsets, self._end = list(entries), offsets, offset
        self._dirty = False
        self.syncs += 1
        self.durable_index = entries[-1][1] if entries else 0

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append one record (durable at the next ``sync``).

        A write that fails (ENOSPC on a full disk) may have put part of the record in
        the file: it is cut off again before the error goes up, so the entry is neither
        in the log nor on disk, and the next append, once there is space, starts at
        the right offset. Without the cut, the records synced after it would follow a
        bad one and replay would refuse the whole journal. The error itself reaches
        pysyncobj: a follower then sends no reply (the leader sends the entries
        again), a leader leaves the command unacknowledged."""
        command = bytes(command)
        record = encode(command, idx, term)
        try:
            _write_all(self._fd, record)
        except OSError:
            os.ftruncate(self._fd, self._end)  # shrinking needs no space
            raise
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)
        self._dirty = True

    def sync(self) -> bool:
        """One fdatasync for every record appended or cut since the last one (group
        commit); whether there was anything to sync."""
        if not self._dirty:
            return False
        started = time.perf_counter()
        os.fdatasync(self._fd)
        if self._on_fsync is not None:
            self._on_fsync(time.perf_counter() - started)
        self._dirty = False
        self.syncs += 1
        self.durable_index = self._entries[-1][1] if self._entries else 0
        return True

    def flush(self) -> None:
        self.sync()

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802, N803 - pysyncobj's
        """Cut the log from position ``entryFrom`` on (an uncommitted suffix the leader
        replaces): the file is cut at that record, nothing before it is rewritten."""
        if entryFrom >= len(self._entries):
            return
        self._end = self._offsets[entryFrom]
        os.ftruncate(self._fd, self._end)
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._dirty = True
        self.durable_index = min(self.durable_index,
                                 self._entries[-1][1] if self._entries else 0)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802, N803 - pysyncobj's
        """Drop the entries before position ``entryTo`` (a dump now covers them): the
        first live offset goes to the meta file (durably, as a term does) and the dead
        records' blocks are freed in place (punch.py). Nothing is copied: rewriting the
        rest, up to hundreds of MiB with an fsync, stalled the Raft thread for seconds.
        The file loses its dead prefix for good at the next start (``_open``)."""
        first = self._offsets[entryTo] if entryTo < len(self._offsets) else self._end
        if first <= len(MAGIC):
            return
        self._meta[FIRST_OFFSET] = first
        self._meta[FILE_ID] = os.fstat(self._fd).st_ino
        self._store_meta()
        del self._entries[:entryTo]
        del self._offsets[:entryTo]
        punch_hole(self._fd, len(MAGIC), first)

    @property
    def first_offset(self) -> int:
        """Where the first live record starts in the file."""
        return self._offsets[0] if self._offsets else self._end

    def __getitem__(self, item: int | slice) -> Any:
        return self._entries[item]

    @property
    def size(self) -> int:
        """The bytes of the journal's live records (what log compaction is decided by:
        compaction.py)."""
        return self._end - self.first_offset

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd >= 0:
            self.sync()
            self._store_meta()
            os.close(self._fd)
            self._fd = -1

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802, N803
        """Kept in memory; stored about once a second (a hint for replay at start:
        pysyncobj clamps it to the log and the leader sends the real one)."""
        self._meta["raftCommitIndex"] = raftCommitIndex
        self._meta_saved = False

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return int(self._meta.get("raftCommitIndex", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802, N803
        """Stored durably before returning: Raft needs term and vote on disk before any
        message that reflects them is sent."""
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = None if votedForNodeId is None else str(votedForNodeId)
        self._store_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.get("currentTerm", 0))

    def getVotedForNodeId(self) -> Any:  # noqa: N802
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if not self._meta_saved:
            self._store_meta()

    def _store_meta(self) -> None:
        self._meta_file.store(self._meta)
        self._meta_saved = True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

