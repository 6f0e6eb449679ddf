"""Corral's own metrics of the control plane: placements, moves, failovers, liveness.

One ``ControlMetrics`` per daemon (``cluster/daemon.py``) is handed to the controllers
and to the API's ``Context``; ``GET /1.0/metrics`` renders ``families()``. Its metric
objects are made with ``registry=None``, as ``state/raft_metrics.py``'s: several daemons
share a test process, and the default registry would refuse a second family of a name.

Each figure is counted on the member where the work happens: placements on the member
that ran the scheduler (the API member for creates and moves, the Raft leader for
evacuations and HA), moves, failovers and liveness verdicts on the leader that drove
them. A new leader starts from its own counts (zero, or what it counted when it led
before) and a deposed one keeps its own, which no longer grow: Prometheus reads each
member's counter as a counter, and the cluster's total is the sum over members
(``?scope=cluster``). Gauges of leader-only work fall to 0 (or disappear) when this
member stops leading.

Labels are bounded sets, never free text: a placement's ``purpose``
(``PURPOSES``) and ``result``; a rejection's ``reason``, the scheduler's filter stage
(``scheduler.filters.FILTERS``); an intent's ``kind`` (``KINDS``) and ``result``;
``member`` only in the liveness families (the cluster's members).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from cluster.state.raft_metrics import without_created
from scheduler.filters import FILTERS
from scheduler.pipeline import Plan, place
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView

# What a placement was for: the API's create and move, an evacuation's target, an HA
# failover's target among the replica holders, a new HA replica holder.
PURPOSES = ("create", "move", "evacuation", "ha_failover", "ha_replica")
PLACEMENT_RESULTS = ("placed", "refused")
REASONS = tuple(stage for stage, _ in FILTERS)
# Intents the leader drives (``State.intents``): a cold move (stop, copy, start; with
# ``migration.stateful`` the processes travel), a live VM migration, and a member's
# evacuation or restore (whose instances' moves count again as move or live_move).
KINDS = ("move", "live_move", "evacuate", "restore")
MOVE_RESULTS = ("succeeded", "failed", "cancelled")
_RESULT_OF_PHASE = {"done": "succeeded", "failed": "failed", "cancelled": "cancelled"}
LIVENESS = ("ONLINE", "OFFLINE")

# Seconds. The scheduler is O(members): tens of microseconds for a few members,
# milliseconds for thousands.
PLACEMENT_BUCKETS = tuple(0.0001 * 2**i for i in range(15))  # 0.1 ms .. 1.6 s
# A small container moves in a second or two; a large VM or an evacuation in minutes.
MOVE_BUCKETS = tuple(0.25 * 2**i for i in range(15))  # 0.25 s .. 68 min
# A live migration pauses a guest for milliseconds (migration.downtime, 300 ms by
# default); a cold move stops an instance for its copy's last pass and its start.
DOWNTIME_BUCKETS = tuple(0.005 * 2**i for i in range(16))  # 5 ms .. 164 s
# From an OFFLINE verdict to the instance running elsewhere: a second or a few.
FAILOVER_BUCKETS = tuple(0.1 * 2**i for i in range(13))  # 0.1 s .. 410 s


class PlaceFn(Protocol):
    """``scheduler.pipeline.place``, told what the placement is for (one of
    ``PURPOSES``): ``ControlMetrics.place`` counts and times it, ``unrecorded`` does not."""

    def __call__(self, purpose: str, view: ClusterView, request: PlacementRequest) -> Plan: ...


def unrecorded(purpose: str, view: ClusterView, request: PlacementRequest) -> Plan:
    """The scheduler alone (dry runs, tests)."""
    return place(view, request)


def move_result(phase: str) -> str | None:
    """The ``result`` label of an intent that finished in ``phase`` (None: not finished)."""
    return _RESULT_OF_PHASE.get(phase)


class ControlMetrics:
    """The control plane's counters, histograms and gauges of one daemon; see the module
    docstring. Fed from the event loop (controllers, handlers); prometheus_client's
    objects take their own lock, so a scrape may read at any time."""

    def __init__(self) -> None:
        self.placements = Counter(
            "corral_scheduler_placements", "Scheduler runs on this member that placed an "
            "instance or found no member for it, by purpose (create, move, evacuation, "
            "ha_failover, ha_replica). The HA controller plans an instance that waits "
            "again on every look (4 a second), so a waiting failover counts as refused "
            "that often; corral_ha_waiting says how many wait.",
            ["purpose", "result"], registry=None)
        self.rejections = Counter(
            "corral_scheduler_rejections", "Candidate members the scheduler's filters "
            "dropped, by the filter stage that dropped them (target, exclude, witness, "
            "mode, online, architecture, instance_type, capacity_known, placement_group, "
            "cpu, memory, disk), in the placements counted by "
            "corral_scheduler_placements_total.", ["reason"], registry=None)
        self.placement_duration = Histogram(
            "corral_scheduler_placement_duration_seconds", "Seconds the scheduler took "
            "to place one instance (filters, scores and choice, on a snapshot of the "
            "state).", buckets=PLACEMENT_BUCKETS, registry=None)
        self.moves = Counter(
            "corral_moves", "Moves (move: stop, copy, start; live_move: a live VM "
            "migration) and member evacuations and restores (evacuate, restore) this "
            "member drove to their end as the Raft leader, by kind and result "
            "(succeeded, failed: undone, cancelled: undone at the client's request).",
            ["kind", "result"], registry=None)
        self.move_duration = Histogram(
            "corral_move_duration_seconds", "Seconds from the leader starting a move, "
            "evacuation or restore to its end, by kind; only those one leader drove from "
            "start to end (one resumed by a new leader counts in corral_moves_total only).",
            ["kind"], buckets=MOVE_BUCKETS, registry=None)
        self.downtime = Histogram(
            "corral_move_downtime_seconds", "Seconds a moved instance did not run, by "
            "kind: live_move, the guest's pause as QEMU measured it; move, from asking "
            "the source to stop it to the target reporting it running (moves of running "
            "instances that succeeded).", ["kind"], buckets=DOWNTIME_BUCKETS,
            registry=None)
        self.failovers = Counter(
            "corral_ha_failovers", "HA instances this member, as the Raft leader, failed "
            "over to a replica holder (failovers committed).", registry=None)
        self.failover_duration = Histogram(
            "corral_ha_failover_duration_seconds", "Seconds from this leader judging an "
            "HA instance's member OFFLINE to the instance's new member reporting it "
            "created and in its desired power state (running, if it ran). Not observed "
            "when the verdict was another leader's. The outage is longer by the time "
            "to the verdict: up to cluster.offline_threshold since the last heartbeat.",
            buckets=FAILOVER_BUCKETS, registry=None)
        self.ha_waiting = Gauge(
            "corral_ha_waiting", "HA instances whose member is OFFLINE and that wait for "
            "a member to fail over to (no fresh enough replica holder can take them), "
            "as this member sees them while it leads (0 elsewhere).", registry=None)
        self.liveness_transitions = Counter(
            "corral_member_liveness_transitions", "Liveness verdicts this member "
            "committed as the Raft leader, by member and the status it was judged "
            "(OFFLINE: no heartbeat for cluster.offline_threshold on the leader's "
            "clock; ONLINE: heard again).", ["member", "status"], registry=None)
        # The leader's monotonic time of each OFFLINE verdict it committed (the start
        # of corral_ha_failover_duration_seconds); dropped when judged ONLINE again.
        self.offline_at: dict[str, float] = {}
        # While this member judges liveness: seconds since it last heard each member.
        self.heartbeat_ages: Callable[[], dict[str, float]] | None = None
        for purpose in PURPOSES:
            for result in PLACEMENT_RESULTS:
                self.placements.labels(purpose, result)
        for reason in REASONS:
            self.rejections.labels(reason)
        for kind in KINDS:
            for result in MOVE_RESULTS:
                self.moves.labels(kind, result)

    def place(self, purpose: str, view: ClusterView, request: PlacementRequest) -> Plan:
        """Run the scheduler and count the run (a ``PlaceFn``)."""
        started = time.perf_counter()
        plan = place(view, request)
        self.placed(purpose, plan, time.perf_counter() - started)
        return plan

    def placed(self, purpose: str, plan: Plan, seconds: float) -> None:
        """Count one scheduler run: its result, the members each filter dropped, its
        duration."""
        self.placements.labels(purpose, "placed" if plan.ok else "refused").inc()
        for stage in plan.explanation.stages:
            if stage.dropped:
                self.rejections.labels(stage.stage).inc(len(stage.dropped))
        self.placement_duration.observe(seconds)

    def move_finished(self, kind: str, phase: str, seconds: float | None) -> None:
        """An intent of ``kind`` finished in ``phase`` (done, failed, cancelled);
        ``seconds`` it took when one leader drove all of it, else None."""
        result = move_result(phase)
        if result is None or kind not in KINDS:
            return
        self.moves.labels(kind, result).inc()
        if seconds is not None:
            self.move_duration.labels(kind).observe(max(0.0, seconds))

    def move_downtime(self, kind: str, seconds: float) -> None:
        """A moved instance of ``kind`` did not run for ``seconds``."""
        self.downtime.labels(kind).observe(max(0.0, seconds))

    def judged(self, member: str, status: str, at: float) -> None:
        """The liveness controller committed ``member`` ``status`` at ``at`` (this
        leader's monotonic clock)."""
        if status not in LIVENESS:
            return
        self.liveness_transitions.labels(member, status).inc()
        if status == "OFFLINE":
            self.offline_at[member] = at
        else:
            self.offline_at.pop(member, None)

    def families(self) -> list[Metric]:
        """Every family, for ``GET /1.0/metrics`` (no ``_created`` samples, as the Raft
        families)."""
        owned = (self.placements, self.rejections, self.placement_duration, self.moves,
                 self.move_duration, self.downtime, self.failovers,
                 self.failover_duration, self.ha_waiting, self.liveness_transitions)
        found = [without_created(family) for metric in owned for family in metric.collect()]
        ages = self.heartbeat_ages
        if ages is not None:
            age = GaugeMetricFamily(
                "corral_member_heartbeat_age_seconds", "Seconds since this member, as the "
                "Raft leader judging liveness, last heard each member's heartbeat (or "
                "began to lead, for a member it has not heard yet); OFFLINE at "
                "cluster.offline_threshold. Only the leader has this family.",
                labels=["member"])
            for member, seconds in sorted(ages().items()):
                age.add_metric([member], seconds)
            found.append(age)
        return found
