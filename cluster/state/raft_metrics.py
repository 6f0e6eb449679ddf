"""Prometheus metrics of one member's Raft store, named after etcd's.

Operators who watch etcd know what to look for (``etcd_server_has_leader``,
``etcd_server_leader_changes_seen_total``, ``etcd_server_proposals_failed_total``,
``etcd_disk_wal_fsync_duration_seconds``), so corral's families mirror those names under
``corral_raft_``. Two sources feed them:

- what Raft believes right now (role, leader, term, indexes, voters) is read when
  Prometheus scrapes, into a ``RaftView``, and turned into families by
  ``view_families``, a pure function;
- what happens between scrapes (leader changes, proposals, commit latency, dump and
  fsync durations) is counted as it happens, into metric objects that ``RaftMetrics``
  owns. They are made with ``registry=None``: several stores live in one test process,
  and the default registry would refuse a second family of the same name. The API asks
  each store for its families (``RaftStore.collect_metrics``) and adds the ``member``
  label itself.

A proposal is one command submitted through this member (``RaftStore._submit_once``,
read barriers included); corral packs many into one log entry, so proposals are counted
in commands, and the log itself is ``corral_raft_commit_index``/``_applied_index``
(etcd's ``proposals_committed_total``/``_applied_total`` are those raft indexes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "corral_raft_"
ROLES = ("leader", "follower", "candidate", "non-voter", "stopped")
# Seconds. A commit on loopback takes about a millisecond, one behind an election a
# second or two, and an attempt gives up after raft.ATTEMPT_SECONDS (5 s).
COMMIT_BUCKETS = tuple(0.0005 * 2**i for i in range(16))  # 0.5 ms .. 16 s
# etcd's WAL fsync histogram starts at 1 ms; an fdatasync on a fast disk takes less.
FSYNC_BUCKETS = tuple(0.0001 * 2**i for i in range(17))  # 0.1 ms .. 6.6 s
# A dump of a small state takes milliseconds, of a million instances minutes (dumps.py).
SNAPSHOT_BUCKETS = tuple(0.01 * 2**i for i in range(16))  # 10 ms .. 5.5 min


@dataclass(frozen=True)
class RaftView:
    """What this member believes of Raft at one moment (read without a barrier: an
    isolated member still reports its own view, as ``RaftStore.raft_status`` does)."""

    role: str  # one of ROLES
    has_leader: bool
    term: int
    commit_index: int
    applied_index: int
    voters: int
    applied_commands: int  # commands this replica has applied since the process started


def view_families(view: RaftView) -> list[Metric]:
    """The point-in-time families of ``view``."""
    role = GaugeMetricFamily(
        PREFIX + "role", "This member's Raft role: 1 on the current one, 0 on the others "
        "(stopped: Raft is not running here).", labels=["role"])
    for name in ROLES:
        role.add_metric([name], 1.0 if view.role == name else 0.0)
    return [
        _gauge("leader", "Whether this member is the Raft leader (1) or not (0).",
               view.role == "leader"),
        _gauge("has_leader", "Whether this member knows a leader (1) or not (0), as "
               "etcd_server_has_leader.", view.has_leader),
        role,
        _gauge("term", "The Raft term this member is in.", view.term),
        _gauge("commit_index", "The last Raft log index this member knows committed.",
               view.commit_index),
        _gauge("applied_index", "The last Raft log index this replica has applied.",
               view.applied_index),
        _gauge("members", "Voters in the Raft configuration as this member knows it "
               "(itself included if it votes).", view.voters),
        CounterMetricFamily(
            PREFIX + "proposals_applied", "Commands (proposals from any member) this "
            "replica has applied since the process started; a log entry carries many, and "
            "a restart replays the journal.", value=view.applied_commands),
    ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=float(value))


class RaftMetrics:
    """The counters and histograms of one store, fed from the event loop (proposals)
    and from Raft's tick thread (leader changes, fsyncs, dumps); prometheus_client's
    metric objects take their own lock, so both may write while a scrape reads."""

    def __init__(self) -> None:
        self.leader_changes = Counter(
            PREFIX + "leader_changes_seen", "Times the leader this member knows changed "
            "to another member, or to one after none (its first election included), as "
            "etcd_server_leader_changes_seen_total.", registry=None)
        self.proposals_committed = Counter(
            PREFIX + "proposals_committed", "Commands proposed through this member that "
            "committed (apply may still have refused them with an error).", registry=None)
        self.proposals_failed = Counter(
            PREFIX + "proposals_failed", "Proposals through this member that failed: "
            "refused for want of a quorum, timed out or lost with a leader change (their "
            "outcome may be unknown; a submit retries them).", registry=None)
        self.proposals_pending = Gauge(
            PREFIX + "proposals_pending", "Proposals through this member submitted and "
            "not answered yet.", registry=None)
        self.commit_latency = Histogram(
            PREFIX + "commit_latency_seconds", "Seconds from submitting a proposal to its "
            "result, committed and applied on this member (successful attempts only).",
            buckets=COMMIT_BUCKETS, registry=None)
        self.snapshot_duration = Histogram(
            PREFIX + "snapshot_duration_seconds", "Seconds to write a dump of the state "
            "for log compaction (forked child, from fork to reaped; dumps that succeeded).",
            buckets=SNAPSHOT_BUCKETS, registry=None)
        self.wal_fsync = Histogram(
            PREFIX + "wal_fsync_duration_seconds", "Seconds of each fdatasync of the Raft "
            "journal (one per group commit), as etcd_disk_wal_fsync_duration_seconds.",
            buckets=FSYNC_BUCKETS, registry=None)

    def proposed(self) -> float:
        """A proposal was submitted: when (for ``answered``)."""
        self.proposals_pending.inc()
        return time.perf_counter()

    def answered(self, started: float, committed: bool | None) -> None:
        """The proposal submitted at ``started`` got its answer: committed, failed, or
        None when its waiter went away (cancelled) before one came."""
        self.proposals_pending.dec()
        if committed:
            self.proposals_committed.inc()
            self.commit_latency.observe(time.perf_counter() - started)
        elif committed is not None:
            self.proposals_failed.inc()

    def collect(self, view: RaftView) -> list[Metric]:
        """Every family: ``view``'s and the counted ones."""
        owned = (self.leader_changes, self.proposals_committed, self.proposals_failed,
                 self.proposals_pending, self.commit_latency, self.snapshot_duration,
                 self.wal_fsync)
        return [*view_families(view), *(without_created(family) for metric in owned
                                        for family in metric.collect())]


def without_created(family: Metric) -> Metric:
    """``family`` without its ``_created`` sample (the time the counter was made):
    etcd exposes none, and the text format shows each as a gauge family of its own.
    ``collect`` makes the family afresh for every scrape, so it is changed in place."""
    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
    return family
