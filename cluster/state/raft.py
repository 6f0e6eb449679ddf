"""``RaftStore``: the replicated state on pysyncobj.

One replicated method carries every command (adding a command type never
renumbers pysyncobj's method table). Apply runs in pysyncobj's tick thread
under a lock; readers on the event loop take the same lock briefly.

A member serves only a replica it has loaded whole (``RaftStore.replica_loaded``, which
the API checks): a journal or dump that does not check at start is moved aside and the
state fetched from the leader, or a lone member stops (``RaftStore.start``). Dumps sent
between members are checked before they count (``state/dump_transfer.py``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.syncobj import _RAFT_STATE

from cluster.state.apply import BARRIER, apply, kept_result
from cluster.state.commands import Command, Result, command
from cluster.state.compaction import NEVER_ENTRIES, SizedCompaction
from cluster.state.digest import MARK, Mark, MarkBook
from cluster.state.dump_transfer import RESTART, DumpTransfer
from cluster.state.dumps import ForkingDump
from cluster.state.errors import (
    NoQuorum,
    OutcomeUnknown,
    ReplicaDamaged,
    Unavailable,
    error_for,
)
from cluster.state.journal import (
    DurableJournal,
    FsyncObserver,
    JournalPath,
    MetaFile,
    fsync_directory,
    install,
)
from cluster.state.leadership import LeadershipSyncObj
from cluster.state.model import State
from cluster.state.policy import compaction_seconds
from cluster.state.quorum import Reachability
from cluster.state.raft_metrics import RaftMetrics, RaftView
from cluster.state.resent import ResentCheck, ResentEntries
from cluster.state.store import Change

logging.getLogger("pysyncobj.syncobj").addFilter(ResentEntries())
install()  # journalFile=JournalPath(...) gets corral's durable journal (state/journal.py)
log = logging.getLogger(__name__)

# Committing a command (RaftStore.submit). One try waits at most ATTEMPT_SECONDS: a
# commit takes milliseconds, an election 0.6-1 s, so 5 s covers two elections in a row.
# A try that failed or timed out is retried with the same id after a pause that doubles
# from BACKOFF_FIRST up to BACKOFF_MAX (retrying faster than an election only queues
# copies), until SUBMIT_SECONDS have passed: then the outcome is unknown (OutcomeUnknown)
# and the API hands the client an operation that settles it. pysyncobj's
# ``commandsWaitLeader`` stays True (its default): a command submitted while there is no
# leader waits in the local queue for the next one instead of failing at once, so a
# write during a failover commits about an election later rather than bouncing.
# Except when this member can tell that no quorum is within reach (state/quorum.py):
# then a submit is refused before it is sent (NoQuorum, not applied), so a member cut
# off from the majority answers at once. QUORUM_GRACE: two election timeouts, so a
# normal election never refuses a write (see quorum.py).
ATTEMPT_SECONDS = 5.0
QUORUM_GRACE = 2.0
SUBMIT_SECONDS = 20.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 0.8
BATCH = 500  # commands in one log entry
BATCH_ITEMS = 1024  # placements in one log entry (a plan of many counts each)
MESSAGE_BYTES = 2**25  # pysyncobj's largest append_entries message (see raft_conf)
# Move every object alive into the collector's permanent generation after this many
# applied commands (a plan of many placements counts each): a full collection over
# millions of replicated records takes seconds, all of it with the GIL held and Raft's
# heartbeats unsent.
FREEZE_EVERY = 10_000
SLOW_READ = 0.05  # s: a read holding the replica lock longer is logged (apply waits)
# Test-only: entries in the log after which a member also compacts it (writes a dump).
# Tests of dumps between real daemons set it, so a few hundred writes make dumps; the
# daemon itself compacts by journal size (state/compaction.py).
COMPACTION_ENV = "CORRAL_RAFT_COMPACTION_ENTRIES"


class _Replica(SyncObjConsumer):
    def __init__(self) -> None:
        # Set before SyncObjConsumer.__init__ so pysyncobj does not pickle them.
        self.lock = threading.Lock()
        self.listeners: list[Any] = []
        self.unfrozen = 0  # items applied since the last gc.freeze()
        # What readers see while Raft restarts and replays into ``state`` (a rebind):
        # the last state, not an empty or half-replayed one.
        self.shown: State | None = None
        self.marks = MarkBook()  # digests at ``replica.mark`` commands (state/digest.py)
        self.applied_commands = 0  # since the process started (a metric: raft_metrics.py)
        super().__init__()
        self.state = State()

    @replicated
    def apply_command(self, cmds: Command | list[Command]) -> Result | list[Result]:
        """One command, or a batch of them in order (one log entry for many commands:
        the only replicated method, so its number never changes)."""
        batch = cmds if isinstance(cmds, list) else [cmds]
        with self.lock:
            results = [self._apply_one(cmd) for cmd in batch]
            self.applied_commands += len(batch)
            self.unfrozen += sum(command_items(cmd) for cmd in batch)
            if self.unfrozen >= FREEZE_EVERY:
                gc.freeze()
                self.unfrozen = 0
        for cmd, result in zip(batch, results, strict=True):
            if cmd.type == BARRIER:
                continue  # nothing changed: nobody to tell
            self._notify(Change(cmd, result))
        return results if isinstance(cmds, list) else results[0]

    def _notify(self, change: Change) -> None:
        """Tell every listener; one that raises is logged and the others still hear.
        The entry is applied by then: an exception escaping into pysyncobj would leave
        its last-applied index behind and apply the entry again on the next tick."""
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - a listener must not break apply
                log.exception("state listener %r failed on %s %s", listener,
                              change.command.type, change.command.id)

    def _apply_one(self, cmd: Command) -> Result:
        """Apply ``cmd``; at a marker, digest the state as it is right after it (every
        replica does so after the same log prefix: state/digest.py)."""
        result = apply(self.state, cmd)
        if cmd.type == MARK:
            self.marks.record(str(cmd.args.get("mark", "")), self._entry_index(), self.state)
        return result

    def _entry_index(self) -> int:
        """The Raft index of the entry being applied: pysyncobj counts an entry as
        applied only after its commands ran (0 outside a SyncObj, in unit tests)."""
        sync = self._syncObj
        return int(sync._SyncObj__raftLastApplied) + 1 if sync is not None else 0


class _PromptSyncObj(SizedCompaction, LeadershipSyncObj):  # type: ignore[misc]
    """Pre-vote and the disruptive-servers rule come from ``LeadershipSyncObj``
    (state/leadership.py), compaction by journal size from ``SizedCompaction``
    (state/compaction.py).

    pysyncobj advances its commit index only at the start of a tick, so a write
    would wait a whole tick period after it was accepted. Ticking again at once
    while a tick made progress commits promptly without a busy short tick period
    (pysyncobj 0.3.17 internals; the version is pinned)."""

    def _progress(self) -> tuple[int, int, int]:
        return (self._SyncObj__raftCommitIndex, self._SyncObj__raftLastApplied,
                self._SyncObj__getCurrentLogIndex())

    _tick_started = 0.0

    def __init__(self, *args: Any, dump: ForkingDump | None = None,
                 on_leader_change: Callable[[], None] | None = None, **kwargs: Any) -> None:
        self._resent = ResentCheck()
        # Told when the leader this member knows becomes another member (the metric
        # raft_metrics.py counts), checked after every tick: a change and its reversal
        # within one tick go unseen, as in etcd, which also looks once per Ready.
        self._on_leader_change = on_leader_change
        self._seen_leader: Any = None
        self._dump = dump  # the transfer of dumps between members goes through it
        self.transfer: DumpTransfer | None = None
        # Set before SyncObj.__init__: its tick thread starts in there.
        self._replies: list[tuple[Any, bool, int, bool]] = []  # held until the next sync
        # Called with (index acknowledged, index durable) for every success reply sent
        # to a leader: an observable for tests (acknowledged <= durable, always).
        self.on_acknowledge: Callable[[int, int], None] | None = None
        super().__init__(*args, **kwargs)
        if not self._SyncObj__otherNodes:
            # A lone voter needs no one's vote: elect itself now, not after a timeout.
            self._SyncObj__raftElectionDeadline = 0.0
        else:
            self._await_leader()

    def _await_leader(self) -> None:
        """A member that just started (or loaded a dump) has not heard from the leader
        yet: peers that connect to it retry only every ``connectionRetryTime``, and one
        of them may connect before the leader does. Calling an election then would
        depose a healthy leader with a stale log (pysyncobj has no pre-vote), so wait a
        retry period plus an election timeout; a dead leader is noticed that much later."""
        conf = self._getConf()
        grace = conf.connectionRetryTime + random.uniform(conf.raftMinTimeout, conf.raftMaxTimeout)
        deadline: float = getattr(self, "_SyncObj__raftElectionDeadline")  # noqa: B009
        self._SyncObj__raftElectionDeadline = max(deadline, monotonic_time() + grace)

    _dumps_loaded = 0  # dumps installed by this process (see _hold_unchecked_commit)

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802, N803
        self._answer()  # replies held for entries that the dump may clear go out first
        self._dumps_loaded += 1
        super()._SyncObj__loadDumpFile(clearJournal)
        if self.transfer is not None and self.transfer.load_failed:
            # pysyncobj only logs this: the member now serves nothing (replica_loaded)
            # and asks the leader for its dump at the next message.
            self.transfer.restart_wanted = True
        if self._resent.pending:  # applied entries were cut and a dump came instead
            log.error("applied log entries were cut and a dump replaced them before the "
                      "leader sent them again: this replica's divergence cannot be ruled "
                      "out; compare it with `corral cluster check`")
        self._resent.forget()
        self._await_leader()

    # Is a re-send harmless or has this replica diverged? (cluster/state/resent.py)
    # pysyncobj calls __deleteEntriesFrom only where a leader's message truncates the
    # log, and handles every message in __onMessageReceived (bound when the transport
    # is made, after __init__ has set ``_resent``).
    _resent: ResentCheck


    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        if message.get("type") == RESTART:
            self._restart_dump(node)
            return
        unchecked = message.get("type") == "append_entries" and "prevLogIdx" not in message
        commit_before, dumps_before = self._SyncObj__raftCommitIndex, self._dumps_loaded
        super()._SyncObj__onMessageReceived(node, message)
        if unchecked and self._dumps_loaded == dumps_before:
            self._hold_unchecked_commit(commit_before)
        if self._resent.pending:
            self._resent.check(self._SyncObj__getEntries)
        if self.transfer is not None and self.transfer.take_restart():
            self._SyncObj__transport.send(node, {"type": RESTART})

    def _hold_unchecked_commit(self, before: int) -> None:
        """pysyncobj raises a follower's commit index to ``min(leader's commit, own last
        index)`` after every AppendEntries from a current leader, also one that carries
        a dump chunk (not the last) or no dump at all (``serialized: None``), which skip
        the check that this log matches the leader's. A deposed leader still holding
        entries of its old term then committed and applied them, and acknowledged their
        clients, though no majority ever had them: an acknowledged write lost and a
        stale read (chaos long profile; tests/unit/test_unchecked_commit.py). Only a
        message that matched the log, or installed the leader's dump, may move the
        commit index on; here it stays where it was."""
        now: int = getattr(self, "_SyncObj__raftCommitIndex")  # noqa: B009
        if now > before:
            self._SyncObj__raftCommitIndex = before
            self._SyncObj__raftLog.setRaftCommitIndex(before)

    # Dumps between members (state/dump_transfer.py): pysyncobj makes its Serializer in
    # __init__ and has no hook for the transfer, so the attribute it is stored in is a
    # property here, which puts a DumpTransfer in its place.

    @property
    def _SyncObj__serializer(self) -> Any:  # noqa: N802
        return self._serializer

    @_SyncObj__serializer.setter
    def _SyncObj__serializer(self, made: Any) -> None:  # noqa: N802
        if self._dump is None:  # no dump hooks (unit tests): pysyncobj's own
            self._serializer = made
            return
        batch = int(self._SyncObj__conf.logCompactionBatchSize)
        self._serializer = self.transfer = DumpTransfer(self._dump, batch)

    def _restart_dump(self, node: Any) -> None:
        """A follower refused a chunk or a whole dump: send the dump again from 0."""
        if self._SyncObj__raftState != _RAFT_STATE.LEADER:
            return
        self._SyncObj__serializer.cancelTransmisstion(node)
        next_index = self._SyncObj__raftNextIndex
        if node in next_index:
            next_index[node] = min(next_index[node], self._SyncObj__raftLog[0][1])
        log.warning("%s refused the dump it was sent: sending it again", node)
    @property
    def journal(self) -> DurableJournal | None:
        log = self._SyncObj__raftLog
        return log if isinstance(log, DurableJournal) else None

    # Group commit (state/journal.py). A follower answers ``append_entries`` through
    # __sendNextNodeIdx at once in pysyncobj, before anything is on disk; here the
    # answers wait until the end of the tick, when one fdatasync covers every entry
    # that arrived in it. The leader counts itself towards a commit at the start of a
    # tick, so the same sync covers the entries it appended in the previous tick; the
    # no-op it appends on election (counted in the same tick) is synced at once.

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False,  # noqa: N802
                                  nextNodeIdx: int | None = None,  # noqa: N803
                                  success: bool = False) -> None:
        if nextNodeIdx is None:
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        self._replies.append((node, reset, nextNodeIdx, success))

    def _SyncObj__deleteEntriesFrom(self, fromIDx: int) -> None:  # noqa: N802, N803
        """Replies held for entries about to be cut were true until now: send them
        (after the sync) before the cut makes them false. Applied entries being cut
        are remembered, to compare with what replaces them (state/resent.py)."""
        self._answer()
        applied: int = getattr(self, "_SyncObj__raftLastApplied")  # noqa: B009
        if fromIDx <= applied:  # a re-send of applied entries: compared once it arrives
            self._resent.truncated(
                self._SyncObj__getEntries(fromIDx, applied - fromIDx + 1), applied)
        super()._SyncObj__deleteEntriesFrom(fromIDx)

    def _SyncObj__onBecomeLeader(self) -> None:  # noqa: N802
        super()._SyncObj__onBecomeLeader()
        self._sync_journal()

    def _sync_journal(self) -> int:
        """Make every appended entry durable; the last durable index."""
        journal = self.journal
        if journal is None:
            return int(self._SyncObj__getCurrentLogIndex())
        journal.sync()
        return journal.durable_index

    def _answer(self) -> None:
        """Sync the journal, then send the replies held since the last sync, in order."""
        if not self._replies:
            self._sync_journal()
            return
        durable = self._sync_journal()
        replies, self._replies = self._replies, []
        for node, reset, next_index, success in replies:
            if success and self.on_acknowledge is not None:
                self.on_acknowledge(next_index - 1, durable)
            super()._SyncObj__sendNextNodeIdx(node, reset, next_index, success)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 - pysyncobj's names
        self._tick(timeToWait)
        for _ in range(4):
            before = self._progress()
            self._tick(0.0)
            if self._progress() == before:
                return

    def _tick(self, wait: float) -> None:
        self._forgive_own_stall()
        super()._onTick(wait)
        self._answer()
        self._note_leader()

    def _note_leader(self) -> None:
        """Count a change of the known leader to a member (etcd's leader_changes_seen:
        losing the leader is no change; finding one again, even the same, is)."""
        leader = self._SyncObj__raftLeader
        if leader == self._seen_leader:
            return
        self._seen_leader = leader
        if leader is not None and self._on_leader_change is not None:
            self._on_leader_change()

    def _forgive_own_stall(self) -> None:
        """After this process stalled (a large batch applied, a dump installed, a full
        collection, the GIL held elsewhere), the leader's heartbeats sit unread in the
        sockets, and pysyncobj checks the election deadline before reading them: the
        member would depose a healthy leader. Restart the countdown instead; a dead
        leader is then noticed one timeout later."""
        now = monotonic_time()
        previous, self._tick_started = self._tick_started, now
        minimum = self._getConf().raftMinTimeout
        if previous and now - previous > minimum / 2:
            deadline: float = getattr(self, "_SyncObj__raftElectionDeadline")  # noqa: B009
            self._SyncObj__raftElectionDeadline = max(deadline, now + minimum)


def raft_conf(journal_dir: Path, password: str, bind_address: str,
              dump: ForkingDump | None = None,
              on_fsync: FsyncObserver | None = None) -> SyncObjConf:
    """Settings for throughput and steady leadership under load (see RECIPES: pysyncobj).

    Raft listens on ``bind_address`` alone (pysyncobj would otherwise bind every
    interface, instance bridges included) and all its traffic is encrypted and
    authenticated with ``password``: pysyncobj unpickles what arrives, so a message
    whose MAC does not check is dropped before a byte of it is parsed. ``dump`` writes
    log-compaction dumps in a forked child (cluster/state/dumps.py); ``on_fsync`` hears
    the seconds of each journal fsync (state/journal.py)."""
    if not password:
        raise ValueError("Raft needs a password: pysyncobj unpickles what peers send")
    hooks = {} if dump is None else {
        "serializer": dump.serialize, "deserializer": dump.deserialize,
        "serializeChecker": dump.check}
    return SyncObjConf(
        password=password,
        bindAddress=bind_address,
        appendEntriesUseBatch=False,  # the batching default commits ~10 sync writes/s
        autoTickPeriod=0.05,
        # Elections after 0.6-1 s of silence: a dead leader is replaced in ~1 s (the
        # cluster's failover goal is 1.5 s). Under load at 1M instances, 0.4-0.7 s deposed
        # healthy leaders while dumps ran in the Raft thread and stalled members
        # mistook their own stall for the leader's (both fixed: dumps.py,
        # _forgive_own_stall); 1-2 s doubled failover to ~3 s.
        raftMinTimeout=0.6,
        raftMaxTimeout=1.0,
        # Check-quorum: a leader that has had no answer from a majority for this long
        # (its own monotonic clock, pysyncobj's __lastResponseTime) steps down, so it
        # stops taking writes and claiming leadership (pysyncobj's default was 30 s).
        # raftMaxTimeout, as etcd's check-quorum uses the election timeout: by then every
        # follower that lost it has had its own election timer fire, so the leader
        # steps down about when the majority can elect another, and stalls shorter than
        # a follower's longest timeout (a slow fsync, a collection) do not depose it.
        leaderFallbackTimeout=1.0,
        appendEntriesPeriod=0.05,
        # pysyncobj 0.3.17 splits an entry larger than this into chunks and marks the
        # last chunk by the entry's data length, not the pickled entry's: for sizes just
        # under a chunk boundary the follower unpickles a truncated entry and is stuck
        # for good. Entries stay far below this (RaftStore batches at most BATCH_ITEMS).
        appendEntriesBatchSizeBytes=MESSAGE_BYTES,
        connectionRetryTime=1.0,
        journalFile=JournalPath(journal_dir / "journal", on_fsync),  # checksummed, fsynced
        fullDumpFile=str(journal_dir / "snapshot"),
        dynamicMembershipChange=True,
        useFork=False,  # pysyncobj's own fork would keep every fd; ForkingDump closes them
        # Compaction goes by the journal's size, not by entries or a timer
        # (cluster/state/compaction.py): pysyncobj's own thresholds are out of reach,
        # except where a test lowers the entry count (COMPACTION_ENV) or the time
        # (state/policy.py) to get dumps after a few hundred writes or seconds.
        logCompactionMinEntries=int(os.environ.get(COMPACTION_ENV, NEVER_ENTRIES)),
        logCompactionMinTime=compaction_seconds(),
        logCompactionBatchSize=2**20,  # a dump sent to a lagging follower, 1 MiB a message
        commandsQueueSize=200000,
        **hooks,
    )


class RaftStore:
    def __init__(self, self_address: str, partners: list[str], journal_dir: Path,
                 password: str, voter: bool = True) -> None:
        self._address = self_address
        self.voter = voter  # a non-voter follows the log (a pysyncobj readonly node)
        self._partners = list(partners)
        self._password = password
        self._journal_dir = journal_dir
        self._replica = _Replica()
        self._replica.listeners.append(self._on_change)
        self._queues: list[asyncio.Queue[Change]] = []
        self._outbox: list[tuple[Command, asyncio.Future[tuple[Any, Any]], float]] = []
        self._flush_scheduled = False
        self._rebind_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: SyncObj | None = None
        self._dump: ForkingDump | None = None
        self._loaded = False  # see replica_loaded
        self._metrics = RaftMetrics()  # kept across restarts of Raft (rebind)

    def _live_state(self) -> State:
        return self._replica.state

    def _install_state(self, state: State) -> None:
        with self._replica.lock:
            self._replica.state = state

    @property
    def replica_loaded(self) -> bool:
        """Whether this member holds a whole replica to serve: false while it starts,
        while it fetches its state from the leader, and after a dump failed to load;
        the API then answers 503 (``api/app.py``). During a rebind the previous replica
        is shown and counts."""
        sync = self._sync
        transfer = sync.transfer if isinstance(sync, _PromptSyncObj) else None
        if transfer is not None and transfer.load_failed:
            return False
        return self._loaded or self._replica.shown is not None

    async def start(self, ready_timeout: float = 30.0) -> None:
        """Open the journal, replay it and wait until a leader is known.

        A member of a multi-member cluster starts even without a quorum (it serves
        reads of its replica and its writes wait for a leader); a single member must
        become its own leader or the start fails.

        A journal or dump that does not check (``ReplicaDamaged``) is never served: a
        lone member raises it (it has no leader to fetch its state from); a member with
        partners moves it aside and rebuilds its log from the leader first
        (``_rebuild``), and raises it if that fails.
        """
        self._loop = asyncio.get_running_loop()
        self._loaded = False
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        try:
            sync = await self._open(self._address if self.voter else None)
        except ReplicaDamaged as exc:
            if not self._partners:
                log.error("%s; a lone member has no leader to fetch its state from: "
                          "not starting", exc)
                raise
            log.error("%s; rebuilding this member's log from the leader", exc)
            await self._rebuild(exc, ready_timeout)
            sync = await self._open(self._address if self.voter else None)
        self._sync = sync
        await self._wait_ready(sync, ready_timeout)
        self._loaded = True

    async def _open(self, self_node: str | None, compact: bool = True) -> _PromptSyncObj:
        """A SyncObj over this member's dump and journal (``self_node`` None: a
        non-voter). Raises ``ReplicaDamaged`` when either does not check: the dump is
        loaded first (pysyncobj would log a failed load and replay the journal after it
        onto an empty state)."""
        metrics = self._metrics
        dump = self._dump = ForkingDump(self._journal_dir / "snapshot", self._live_state,
                                        self._install_state,
                                        on_written=metrics.snapshot_duration.observe)
        await asyncio.to_thread(dump.preload)
        conf = raft_conf(self._journal_dir, self._password, self._address, dump,
                         on_fsync=metrics.wal_fsync.observe)
        if not compact:
            conf.logCompactionMinEntries = conf.logCompactionMinTime = 2**62
        sync: _PromptSyncObj = await asyncio.to_thread(
            _PromptSyncObj, self_node, self._partners, conf, [self._replica], dump=dump,
            on_leader_change=metrics.leader_changes.inc)
        return sync

    async def _rebuild(self, damage: ReplicaDamaged, timeout: float) -> None:
        """Move the damaged journal and meta (and the dump, if it is the damaged file)
        aside, kept for a post-mortem, then fetch
        the log from the leader as a non-voter: an empty log must not vote (it could
        elect a leader that lacks acknowledged entries) nor be served. Once it has
        applied what the leader had committed, record the leader's term as voted for,
        so a lost vote cannot be cast twice in that term. Raises ``damage`` when no
        leader brings the log back within ``timeout`` s."""
        meta = MetaFile(self._journal_dir / "journal.meta")
        try:
            before = meta.load()
        except ReplicaDamaged:
            before = {}
        kept = quarantine(self._journal_dir,
                          dump=Path(damage.path).name == "snapshot")
        log.error("damaged state moved to %s", kept)
        assert self._loop is not None
        sync = await self._open(None, compact=False)
        try:
            deadline = self._loop.time() + timeout
            while not (sync.isReady() and sync._getLeader() is not None):
                if self._loop.time() > deadline:
                    raise damage
                await asyncio.sleep(0.02)
            term, leader = int(sync._getTerm()), str(sync._getLeader().id)
        finally:
            await self._close_sync(sync)
        values = meta.load()
        if int(before.get("currentTerm", 0)) > term:  # it had voted in a later term
            values.update(currentTerm=before["currentTerm"],
                          votedForNodeId=before.get("votedForNodeId"))
        else:
            values.update(currentTerm=term, votedForNodeId=leader)
        meta.store(values)
        with self._replica.lock:  # the voter replays the rebuilt journal from scratch
            self._replica.state = State()

    async def _wait_ready(self, sync: SyncObj, ready_timeout: float) -> None:
        assert self._loop is not None
        deadline = self._loop.time() + ready_timeout
        while not (sync.isReady() and sync._getLeader() is not None):
            if self._loop.time() > deadline:
                if self._partners:
                    return
                raise Unavailable("The replicated state did not become ready")
            await asyncio.sleep(0.01)

    async def rebind(self, self_address: str, partners: list[str], password: str,
                     fresh: bool, voter: bool = True) -> None:
        """Restart Raft under a new address, partners or password (cluster enable, join).

        The replica is rebuilt from the journal (or, with ``fresh``, from the
        cluster that this member joins), never applied twice on top of itself.
        """
        async with self._rebind_lock:
            await self._rebind(self_address, partners, password, fresh, voter)

    async def _rebind(self, self_address: str, partners: list[str], password: str,
                      fresh: bool, voter: bool) -> None:
        await self.close()
        if fresh:
            for name in ("journal", "journal.meta", "snapshot", "snapshot.tmp", "snapshot.part",
                         "snapshot.1.tmp"):
                (self._journal_dir / name).unlink(missing_ok=True)
        with self._replica.lock:
            self._replica.shown, self._replica.state = self._replica.state, State()
        self._address, self._partners, self._password = self_address, list(partners), password
        self.voter = voter
        try:
            await self.start()
        finally:
            with self._replica.lock:
                self._replica.shown = None

    async def add_member(self, raft_address: str, timeout: float = 10.0) -> None:
        """Add a voter (pysyncobj's dynamic membership; the change goes through the log)."""
        await self._membership(self._require().addNodeToCluster, raft_address, timeout)

    async def remove_member(self, raft_address: str, timeout: float = 10.0) -> None:
        await self._membership(self._require().removeNodeFromCluster, raft_address, timeout)

    def _require(self) -> SyncObj:
        if self._sync is None:
            raise Unavailable("The replicated state is not running")
        return self._sync

    async def _membership(self, change: Any, raft_address: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        change(raft_address, callback=lambda result, error: loop.call_soon_threadsafe(
            _resolve, future, (result, error)))
        try:
            _, error = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise Unavailable(f"Raft membership change for {raft_address} timed out") from exc
        if error != FAIL_REASON.SUCCESS:
            raise Unavailable(f"Raft membership change for {raft_address} failed ({error})")

    async def close(self) -> None:
        if self._sync is not None:
            sync, self._sync = self._sync, None
            await self._close_sync(sync)
        elif self._dump is not None:
            await asyncio.to_thread(self._dump.wait)

    async def _close_sync(self, sync: SyncObj) -> None:
        # Synchronously: a late destroy would detach the consumer from the next SyncObj.
        await asyncio.to_thread(sync.destroy_synchronous)
        if isinstance(sync, _PromptSyncObj) and sync.transfer is not None:
            sync.transfer.close()
        if self._dump is not None:
            await asyncio.to_thread(self._dump.wait)

    def _on_change(self, change: Change) -> None:
        loop = self._loop
        if loop is None or not self._queues:
            return
        for queue in list(self._queues):
            loop.call_soon_threadsafe(queue.put_nowait, change)

    def subscribe(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    @contextmanager
    def read(self) -> Iterator[State]:
        """The replica, under the lock that apply takes: hold it briefly (a long read
        renders in chunks, cluster/api/reads.py); a hold past SLOW_READ is logged."""
        with self._replica.lock:
            started = time.perf_counter()
            shown = self._replica.shown
            try:
                yield shown if shown is not None else self._replica.state
            finally:
                held = time.perf_counter() - started
                if held > SLOW_READ:
                    log.warning("a read held the replica lock %.0f ms, apply waited: %s",
                                held * 1000, "".join(traceback.format_stack(limit=3)[:1]))

    def commit_index(self) -> int:
        """The Raft log index this member knows committed (0 while Raft is down): a peer
        that this member asks to act waits until it has applied as much (``wait_applied``),
        so it sees every write this member has seen."""
        sync = self._sync
        return int(sync._SyncObj__raftCommitIndex) if sync is not None else 0

    def applied_index(self) -> int:
        """The Raft log index this replica has applied (entries are counted once applied)."""
        sync = self._sync
        return int(sync._SyncObj__raftLastApplied) if sync is not None else 0

    async def wait_applied(self, index: int, timeout: float) -> bool:
        """Wait until this replica has applied the log up to ``index``, at most ``timeout``
        s; whether it has."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.applied_index() < index:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def wait_mark(self, mark: str, timeout: float) -> Mark | None:
        """This replica's digest at the marker ``mark`` once it has applied it, or None
        after ``timeout`` s (the member is behind, or the marker never committed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._replica.lock:
                found = self._replica.marks.get(mark)
            if found is not None or loop.time() >= deadline:
                return found
            await asyncio.sleep(0.02)

    async def read_barrier(self, timeout: float) -> None:
        """Return once this replica has applied everything committed before the call:
        an empty command goes through the log (with the other commands queued now, in
        one entry) and its result comes back only once applied here. A member that is
        not in a quorum cannot commit it: ``Unavailable`` after ``timeout`` s, never a
        read of stale state (a follower behind, or a leader that lost its quorum); at
        once (``NoQuorum``) when this member can tell that no quorum is within reach
        (``quorum.py``): a barrier changes nothing, so refusing it is always safe."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            self._refuse_without_quorum()
            _, error = await self._submit_once(command(BARRIER), left)
            if error == FAIL_REASON.SUCCESS:
                return
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))  # no leader yet
        raise Unavailable("Cannot confirm that this member's replica is current "
                          f"(no quorum within {timeout:g} s); retry")

    def reachability(self) -> Reachability | None:
        """This member's judgement of quorum (``state/quorum.py``); None while Raft is
        not running."""
        sync = self._sync
        return sync.reachability(QUORUM_GRACE) if isinstance(sync, _PromptSyncObj) else None

    def _refuse_without_quorum(self) -> None:
        """``NoQuorum`` when this member can tell that no quorum is within reach."""
        judged = self.reachability()
        if judged is not None and judged.no_quorum:
            self._metrics.proposals_failed.inc()
            raise NoQuorum(judged.reachable, judged.voters)

    def leader(self) -> str | None:
        leader = self._sync._getLeader() if self._sync else None
        return str(leader) if leader is not None else None

    def raft_status(self) -> dict[str, Any]:
        """This member's own view of Raft, read without a barrier (an isolated member
        must still say what it believes): its role, the leader it knows, its term, and
        its commit and applied indexes, and since Raft started, how many pre-vote rounds
        it asked for and how many RequestVotes it dropped (state/leadership.py); how many
        voters it reached lately and whether it refuses writes for want of a quorum
        (state/quorum.py)."""
        sync = self._sync
        if sync is None:
            return {"address": self._address, "role": "stopped", "leader": None, "term": 0,
                    "commit_index": 0, "applied_index": 0, "pre_vote_rounds": 0,
                    "votes_ignored": 0, "voters_reachable": None, "voters": None,
                    "no_quorum": False}
        role = "leader" if sync._isLeader() else "follower" if self.voter else "non-voter"
        judged = self.reachability()
        return {"address": self._address, "role": role, "leader": self.leader(),
                "term": int(sync._getTerm()), "commit_index": self.commit_index(),
                "applied_index": self.applied_index(),
                "pre_vote_rounds": sync.pre_vote_rounds, "votes_ignored": sync.votes_ignored,
                "voters_reachable": judged.reachable if judged else None,
                "voters": judged.voters if judged else None,
                "no_quorum": judged.no_quorum if judged else False}

    def collect_metrics(self) -> list[Metric]:
        """This member's Raft metric families (``state/raft_metrics.py``), without a
        ``member`` label (the API adds it). Read without a barrier, like
        ``raft_status``: cheap enough for every scrape."""
        return self._metrics.collect(self._view())

    def _view(self) -> RaftView:
        sync = self._sync
        voters = (len(self.raft_partners()) if sync is not None else len(self._partners)) \
            + (1 if self.voter else 0)
        # One int, read without the replica's lock, which a long apply may hold.
        applied_commands = self._replica.applied_commands
        if sync is None:
            return RaftView(role="stopped", has_leader=False, term=0, commit_index=0,
                            applied_index=0, voters=voters,
                            applied_commands=applied_commands)
        return RaftView(role=_role(sync, self.voter), has_leader=sync._getLeader() is not None,
                        term=int(sync._getTerm()), commit_index=self.commit_index(),
                        applied_index=self.applied_index(), voters=voters,
                        applied_commands=applied_commands)

    @property
    def address(self) -> str:
        """This member's Raft address."""
        return self._address

    def members(self) -> list[str]:
        return [self._address, *self._partners]

    def raft_partners(self) -> set[str]:
        """The voters Raft itself counts besides this one (after membership changes)."""
        sync = self._sync
        if sync is None:
            return set()
        for _ in range(3):  # the tick thread may change the set while it is copied
            try:
                return {str(n.address) for n in list(sync._SyncObj__otherNodes)}  # type: ignore[attr-defined]
            except RuntimeError:
                continue
        return set(self._partners)

    def _flush(self) -> None:
        """Send everything queued since the last flush in entries of at most BATCH
        commands (and BATCH_ITEMS placements), with one timer per batch and timeout (a
        timer per command cost a tenth of the leader's time at thousands of commands per
        second)."""
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        while self._outbox:
            taken = _batch_length(self._outbox)
            chunk, self._outbox = self._outbox[:taken], self._outbox[taken:]
            futures = [future for _, future, _ in chunk]
            timers = [loop.call_later(timeout, _expire, [f for _, f, t in chunk if t == timeout])
                      for timeout in {timeout for _, _, timeout in chunk}]

            def done(results: Any, error: Any,
                     futures: list[asyncio.Future[tuple[Any, Any]]] = futures,
                     timers: list[asyncio.TimerHandle] = timers) -> None:
                loop.call_soon_threadsafe(_resolve_batch, futures, results, error, timers)

            self._replica.apply_command([cmd for cmd, _, _ in chunk], callback=done)

    async def submit(self, cmd: Command, timeout: float = SUBMIT_SECONDS) -> Any:
        """Commit ``cmd`` and return its result. A try whose outcome is unknown (a
        timeout, a leader change, a command discarded by a new leader) is retried with
        the same id, which apply takes once, after a growing pause (see ATTEMPT_SECONDS);
        after ``timeout`` s ``OutcomeUnknown``. ``NoQuorum`` at once, before anything is
        sent, when this member can tell that no quorum is within reach (``quorum.py``)."""
        self._refuse_without_quorum()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause, tries = BACKOFF_FIRST, 0
        while True:
            tries += 1
            left = deadline - loop.time()
            result, error = await self._submit_once(cmd, max(0.05, min(ATTEMPT_SECONDS, left)))
            if error == FAIL_REASON.SUCCESS:
                assert isinstance(result, Result)
                if not result.ok:
                    raise error_for(result.code, result.error)
                return result.value
            left = deadline - loop.time()
            if left <= 0:
                raise OutcomeUnknown(cmd.type, cmd.id, cmd.time, tries, timeout)
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(BACKOFF_MAX, pause * 2)

    async def settle(self, command_id: str, timeout: float) -> Result | None:
        """After ``OutcomeUnknown``: the command's result if it took effect, None if it
        never will (a retry is then safe). Raises ``Unavailable`` while no quorum.

        Why a barrier settles it: the barrier goes through this member's command queue
        behind every copy of the command (pysyncobj's queue is FIFO) and over the same
        connection to the leader, which appends in arrival order; a copy lost with a
        connection or a deposed leader's log can never commit once a later term has
        committed the barrier (Raft's log matching). So once the barrier has applied
        here, each copy was applied before it or is dead. Apply keeps the results of
        recent command ids (``RETRY_HORIZON``), which answers the rest."""
        await self.read_barrier(timeout)
        with self._replica.lock:
            kept = self._replica.state.recent.get(command_id)
        return None if kept is None else kept_result(kept)

    async def _submit_once(self, cmd: Command, timeout: float) -> tuple[Any, Any]:
        """Queue ``cmd`` for the next batch: commands submitted together (concurrent
        API calls, agents' reports) share one Raft entry; a lone command goes alone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        self._outbox.append((cmd, future, timeout))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        started = self._metrics.proposed()
        committed: bool | None = None  # None: the waiter went away (cancelled)
        try:
            answer = await future
            committed = answer[1] == FAIL_REASON.SUCCESS
            return answer
        finally:
            self._metrics.answered(started, committed)


def quarantine(journal_dir: Path, dump: bool = False) -> Path:
    """Move the journal and its meta file into ``damaged-<time>/``, and the dump too
    when ``dump`` (the damaged file; a journal that starts after a dump is no use
    without it); the new directory. A dump that checks stays: it carries its own
    checksum, and the rebuild starts from it."""
    kept = journal_dir / f"damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    kept.mkdir()
    for name in ("journal", "journal.meta", *(("snapshot",) if dump else ())):
        if (journal_dir / name).exists():
            os.replace(journal_dir / name, kept / name)
    fsync_directory(journal_dir)
    return kept


def _role(sync: SyncObj, voter: bool) -> str:
    """The Raft role of a running member, as ``raft_metrics.ROLES`` names it."""
    if not voter:
        return "non-voter"
    state = sync._SyncObj__raftState
    return ("leader" if state == _RAFT_STATE.LEADER
            else "candidate" if state == _RAFT_STATE.CANDIDATE else "follower")


def command_items(cmd: Command) -> int:
    """What a command weighs in a log entry: an ``instance.create_many`` its items."""
    many = cmd.args.get("items") if cmd.type == "instance.create_many" else None
    return len(many) if isinstance(many, list) else 1


def _batch_length(outbox: list[tuple[Command, Any, float]]) -> int:
    """How many queued commands go in the next entry: at most BATCH commands and
    BATCH_ITEMS items (an ``instance.create_many`` counts its items), at least one."""
    items = 0
    for taken, (cmd, _, _) in enumerate(outbox[:BATCH]):
        items += command_items(cmd)
        if items > BATCH_ITEMS and taken > 0:
            return taken
    return min(len(outbox), BATCH)


def _resolve_batch(futures: list[asyncio.Future[tuple[Any, Any]]], results: Any,
                   error: Any, timers: list[asyncio.TimerHandle]) -> None:
    for timer in timers:
        timer.cancel()
    for index, future in enumerate(futures):
        ok = error == FAIL_REASON.SUCCESS and isinstance(results, list)
        _resolve(future, (results[index] if ok else None, error))


def _expire(futures: list[asyncio.Future[tuple[Any, Any]]]) -> None:
    """The outcome of these commands is unknown after their timeout (submit retries)."""
    for future in futures:
        _resolve(future, (None, FAIL_REASON.REQUEST_DENIED))


def _resolve(future: asyncio.Future[tuple[Any, Any]], value: tuple[Any, Any]) -> None:
    if not future.done():
        future.set_result(value)
