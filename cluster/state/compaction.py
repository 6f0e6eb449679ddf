"""When a voter compacts its Raft log: by the bytes of log a dump would replace.

pysyncobj 0.3.17 compacts (``SyncObj.__tryLogCompaction``) once the log holds more
than ``logCompactionMinEntries`` entries or ``logCompactionMinTime`` seconds have passed
since the last dump. Neither fits corral:

- An entry is a batch of up to ``BATCH`` commands or ``BATCH_ITEMS`` placements
  (raft.py), from a few hundred bytes to hundreds of KiB: 13,907 entries carried a
  million placements (issue 13), so the 20,000-entry threshold was never reached and
  the whole log stayed in memory and on disk (``DurableJournal`` keeps every entry in
  both), to be replayed at every start.
- A timer dumps the whole state every few minutes however little changed: at a million
  instances a 400 MiB dump for a few heartbeats.

So corral compacts by size, as Redis rewrites its append-only file
(``auto-aof-rewrite-min-size`` and ``-percentage``): when the journal holds at least
``MIN_BYTES`` and at least ``RATIO`` times the size of the last dump. The log then never
costs more than about a dump to replay or keep, and writing dumps costs a bounded
share of the work: every dump of ``S`` bytes pays for at least ``RATIO * S`` bytes of
new log. The dump is written by a forked child (``dumps.py``), so the Raft thread
only forks and later rewrites the part of the journal the dump does not cover.

``SizedCompaction`` plugs this in front of pysyncobj's own check (a mixin of
``_PromptSyncObj``): when the policy says so it calls pysyncobj's public
``forceLogCompaction``, and pysyncobj does the rest as before (a dump in progress, or
nothing applied since the last one, still defers it). pysyncobj's own thresholds are set
out of reach in ``raft_conf`` (``NEVER``); a SyncObj opened with them lowered again
compacts by them as before, and one opened with them at ``DISABLED`` (a log rebuilt
from the leader, raft.py) never compacts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

MiB = 2**20
# Below MIN_BYTES a journal is cheap to keep and to replay. Past it, the journal may
# grow to RATIO times the last dump: a byte of journal costs about 7 times as much to
# replay as a byte of dump costs to load (at a million instances, 180 bytes of journal
# per placement applied at ~6,000/s against a 414 MiB dump loaded in 55 s), so a start
# replays the journal in at most about twice the time it takes to load the dump.
MIN_BYTES = 64 * MiB
RATIO = 0.25
NEVER_ENTRIES = 2**40  # pysyncobj's own thresholds, out of reach (raft_conf)
NEVER_SECONDS = 10 * 365 * 86400.0
DISABLED = 2**62  # raft.py sets pysyncobj's thresholds to this: no compaction at all
STAT_PERIOD = 1.0  # seconds between looks at the dump file's size
GAP_NOTED = 0.3  # seconds between two ticks of the Raft thread noted as a stall
MAX_EVENTS = 200  # events kept


def compaction_due(journal_bytes: int, dump_bytes: int, min_bytes: int = MIN_BYTES,
                   ratio: float = RATIO) -> bool:
    """Whether a journal of ``journal_bytes`` should be replaced by a dump, the last
    dump being ``dump_bytes`` (0: none yet)."""
    return journal_bytes >= max(min_bytes, ratio * dump_bytes)


@dataclass
class CompactionPolicy:
    """The size policy with its inputs: where the dump is, and its size as last seen
    (statted at most once per ``STAT_PERIOD``, and only once the journal is past
    ``min_bytes``: the check runs at every tick)."""

    dump_path: str
    min_bytes: int = field(default_factory=lambda: MIN_BYTES)
    ratio: float = field(default_factory=lambda: RATIO)
    _dump_bytes: int = 0
    _statted_at: float = float("-inf")

    def due(self, journal_bytes: int, now: float | None = None) -> bool:
        if journal_bytes < self.min_bytes:
            return False
        now = time.monotonic() if now is None else now
        if now - self._statted_at >= STAT_PERIOD:
            self._statted_at = now
            try:
                self._dump_bytes = os.stat(self.dump_path).st_size
            except OSError:
                self._dump_bytes = 0
        return compaction_due(journal_bytes, self._dump_bytes, self.min_bytes, self.ratio)


class SizedCompaction:
    """Mixin for a pysyncobj ``SyncObj`` whose journal has a byte size
    (``DurableJournal.size``): forces pysyncobj's log compaction when the
    ``CompactionPolicy`` says it is due. ``dumps_started`` counts the compactions this
    started, ``compactions`` those that completed (pysyncobj moved its last dumped entry
    on and cut the log), whatever started them."""

    dumps_started = 0
    compactions = 0
    longest_stall = 0.0  # seconds: the longest the Raft thread spent starting or ending one
    # What happened when (wall-clock time, what, seconds it took in the Raft thread):
    # observables for the simulator and tests, a few entries per compaction.
    events: list[tuple[float, str, float]]
    _last_call: float
    _term_seen: int
    _policy: CompactionPolicy | None = None

    def _SyncObj__tryLogCompaction(self) -> None:  # noqa: N802 - pysyncobj's mangled name
        if not hasattr(self, "events"):
            self.events, self._last_call = [], time.perf_counter()
        self._note_gap()
        forced = self._force_if_due()
        before = self._SyncObj__lastSerializedEntry  # type: ignore[attr-defined]
        started = time.perf_counter()
        super()._SyncObj__tryLogCompaction()  # type: ignore[misc]
        took = time.perf_counter() - started
        self.longest_stall = max(self.longest_stall, took)
        if forced and self._force_pending():
            # pysyncobj did not take it (a dump is still being written): ask again when
            # the policy still says so after that dump has cut the log, not blindly.
            setattr(self, "_SyncObj__forceLogCompaction", False)  # noqa: B010
        elif forced:
            self.dumps_started += 1
            self.events.append((time.time(), "dump started", took))
        if self._SyncObj__lastSerializedEntry != before:  # type: ignore[attr-defined]
            self.compactions += 1
            self.events.append((time.time(), "log cut", took))

    def _force_pending(self) -> bool:
        """Whether a compaction was asked for and pysyncobj has not started it yet."""
        return bool(getattr(self, "_SyncObj__forceLogCompaction", False))

    def _note_gap(self) -> None:
        """pysyncobj checks for compaction once a tick: a long gap between two checks
        is a stall of the Raft thread, whatever its cause, and a new term is an election
        (both noted for the simulator; the stalls kept are the last ``MAX_EVENTS``)."""
        now = time.perf_counter()
        gap, self._last_call = now - self._last_call, now
        term = int(getattr(self, "_SyncObj__raftCurrentTerm", 0))
        if term != getattr(self, "_term_seen", term):
            self.events.append((time.time(), f"term {term} (an election)", gap))
        self._term_seen = term
        if gap >= GAP_NOTED:
            self.events.append((time.time(), "Raft thread stalled", gap))
            stalls = [i for i, event in enumerate(self.events)
                      if event[1] == "Raft thread stalled"]
            if len(stalls) > MAX_EVENTS:
                del self.events[stalls[0]]

    def _force_if_due(self) -> bool:
        """Ask pysyncobj to compact if the policy says so; whether this asked."""
        conf: Any = self._getConf()  # type: ignore[attr-defined]
        if conf.logCompactionMinEntries >= DISABLED or not conf.fullDumpFile:
            return False
        journal = self._SyncObj__raftLog  # type: ignore[attr-defined]
        size = getattr(journal, "size", None)
        if size is None:
            return False
        if self._policy is None:
            self._policy = CompactionPolicy(str(conf.fullDumpFile))
        if self._force_pending() or not self._policy.due(int(size)):
            return False
        self.forceLogCompaction()  # type: ignore[attr-defined]
        return True
