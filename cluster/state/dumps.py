"""Full dumps of the replica for Raft log compaction, written by a forked child.

pysyncobj compacts its log by pickling the whole state in its tick thread; at 500k
instances that took minutes, far past every election timeout, so leaders fell and
replicas lagged (issue 4). A forked child sees the state as it was at the fork and
writes it while Raft goes on (copy-on-write, as Redis does), at the lowest CPU
priority. The child first closes every inherited descriptor, so it holds no socket,
pipe or container fd of the daemon, and it never logs or takes a lock.

A dump ends with the SHA-256 of everything before it, and nothing counts as a dump
before it has been loaded: a local dump at start (``preload``: a damaged one raises
``ReplicaDamaged`` and the member rebuilds or stops, see ``RaftStore.start``) and a
leader's dump received by a lagging follower (``state/dump_transfer.py`` loads it into a
scratch state before it replaces the current file). The loaded state is kept for the
``deserialize`` that follows, so a dump is read once, not twice.

A leader's dump installed while a local dump child still runs would be overwritten by
that child's older dump when it finishes: ``discard`` kills and reaps the child first.

Plugged in through pysyncobj's documented hooks (``serializer``, ``deserializer``,
``serializeChecker``); the transfer between members is ``state/dump_transfer.py``.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import os
import pickle
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pysyncobj import SERIALIZER_STATE

from cluster.state.errors import ReplicaDamaged
from cluster.state.model import State

MAGIC = b"CORRAL-DUMP-1\n"
_DIGEST = hashlib.sha256().digest_size
_GZIP_MAGIC = b"\x1f\x8b"


class CorruptDump(Exception):
    """A dump whose checksum does not match (truncated, or a chunk went missing)."""


class ForkingDump:
    """The three pysyncobj hooks around one dump file.

    ``read_state`` returns the live state (only ever called in Raft's tick thread,
    where apply also runs, so the state is consistent); ``install`` replaces it.
    ``on_written`` hears the seconds each dump took, from the fork until the child that
    wrote it whole was reaped (the Raft store's snapshot histogram).
    """

    def __init__(self, path: Path, read_state: Callable[[], State],
                 install: Callable[[State], None],
                 on_written: Callable[[float], None] | None = None) -> None:
        self._path = path
        self._read_state = read_state
        self._install = install
        self._on_written = on_written
        self._pid = 0
        self._forked_at = 0.0
        self._loaded: tuple[Path, tuple[int, int, int], State, tuple[Any, ...]] | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def busy(self) -> bool:
        """Whether a child is writing a dump."""
        return bool(self._pid)

    def serialize(self, tmp_file: str, meta: tuple[Any, ...]) -> None:
        """Start a dump in a child. pysyncobj then tries to rename ``tmp_file``, which
        does not exist yet: that rename fails quietly and the checker, not it, says
        when the dump is done."""
        if self._pid:
            return
        self._forked_at = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: nothing here may log, lock or return
            status = 1
            try:
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.nice(19)  # the live replicas come first; a dump may take its time
                gc.disable()
                write_dump(self._path, self._read_state(), meta)
                status = 0
            finally:
                os._exit(status)
        self._pid = pid

    def check(self) -> int:
        if not self._pid:
            return SERIALIZER_STATE.NOT_SERIALIZING
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: outcome unknown
            self._pid = 0
            return SERIALIZER_STATE.FAILED
        if pid == 0:
            return SERIALIZER_STATE.SERIALIZING
        self._pid = 0
        if os.waitstatus_to_exitcode(status) != 0:
            return SERIALIZER_STATE.FAILED
        if self._on_written is not None:
            self._on_written(time.monotonic() - self._forked_at)
        return SERIALIZER_STATE.SUCCESS

    def deserialize(self, file_name: str) -> tuple[Any, ...]:
        """Load the dump into the replica; pysyncobj gets its log bookkeeping back. A
        dump verified by ``preload``/``verified`` is installed without reading it again."""
        path = Path(file_name)
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded[0] == path and loaded[1] == _identity(path):
            state, meta = loaded[2], loaded[3]
        else:
            state, meta = read_dump(path)
        self._install(state)
        return meta

    def preload(self) -> None:
        """Check the local dump at start by loading it (into a scratch state, kept for
        ``deserialize``). Raises ``ReplicaDamaged`` when it does not load: pysyncobj would
        only log that and replay the journal after it onto an empty state."""
        if not self._path.exists():
            return
        try:
            state, meta = read_dump(self._path)
        except Exception as exc:  # noqa: BLE001 - any failure to load is damage
            raise ReplicaDamaged(str(self._path), -1, f"the dump does not load ({exc})") from exc
        self.verified(self._path, state, meta)

    def verified(self, path: Path, state: State, meta: tuple[Any, ...]) -> None:
        """``path`` holds ``state`` and ``meta`` (just loaded): the next ``deserialize``
        of that very file uses them."""
        self._loaded = (path, _identity(path), state, meta)

    def discard(self) -> None:
        """Stop a dump being written (a newer dump is about to be installed): once this
        returns, no child can rename its older dump over the installed one."""
        if not self._pid:
            return
        try:
            os.kill(self._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait()
        self._path.with_name(self._path.name + ".part").unlink(missing_ok=True)

    def wait(self) -> None:
        """Reap a dump still being written (on close)."""
        if self._pid:
            try:
                os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass
            self._pid = 0


def _identity(path: Path) -> tuple[int, int, int]:
    """Which file ``path`` is now (a rename puts another one there)."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def write_dump(path: Path, state: State, meta: tuple[Any, ...]) -> None:
    """Write atomically: a reader sees the previous dump or this whole one."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as raw:
        out = _HashingWriter(raw)
        out.write(MAGIC)
        pickle.dump((state, meta), out, protocol=pickle.HIGHEST_PROTOCOL)
        raw.write(out.digest())
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(part, path)


def read_dump(path: Path) -> tuple[State, tuple[Any, ...]]:
    data = path.read_bytes()
    if data.startswith(_GZIP_MAGIC):
        return _read_pysyncobj_dump(data)
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if not body.startswith(MAGIC) or hashlib.sha256(body).digest() != digest:
        raise CorruptDump(f"{path} is not a whole corral dump ({len(data)} bytes)")
    state, meta = pickle.loads(memoryview(body)[len(MAGIC):])
    return state, tuple(meta)


def _read_pysyncobj_dump(data: bytes) -> tuple[State, tuple[Any, ...]]:
    """A dump written by pysyncobj's own serializer (before corral's dumps): gzip of
    ``(data, last entry, previous entry, cluster)`` where ``data[1]`` holds the
    replica's attributes."""
    loaded = pickle.loads(gzip.decompress(data))
    consumers = loaded[0][1:] if isinstance(loaded[0], list) else []
    state = consumers[0].get("state") if consumers else None
    if not isinstance(state, State):
        raise CorruptDump("the pysyncobj dump holds no corral state")
    return state, tuple(loaded[1:])


class _HashingWriter:
    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes | memoryview) -> int:
        self._hash.update(chunk)
        return self._raw.write(chunk)

    def digest(self) -> bytes:
        return self._hash.digest()
