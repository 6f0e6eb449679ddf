"""The controller that commits members' liveness transitions (see ``cluster.membership.liveness``).

Each leadership starts a fresh ``LivenessTracker`` (every member gets a threshold of grace
on this leader's clock), so a new leader never demotes members on deadlines another
leader kept. It reads the heartbeat counts from its replica, which is how it hears the
applied heartbeats, and submits only transitions. Apply re-checks each transition against
the heartbeat count and the lease's epoch, so a deposed leader's verdicts are refused.

Each committed verdict is counted (``corral_member_liveness_transitions_total``) and its
time kept for the HA controller's failover durations; while it runs, the tracker's
heartbeat ages are ``corral_member_heartbeat_age_seconds`` (``control_metrics.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from cluster.controllers.control_metrics import ControlMetrics
from cluster.controllers.runtime import Lease
from cluster.membership.liveness.tracker import Committed, LivenessTracker, Transition
from cluster.state.apply_members import offline_threshold
from cluster.state.model import State

log = logging.getLogger(__name__)
PERIOD = 0.25  # seconds between looks: the most an OFFLINE verdict comes late by
SUBMIT_TIMEOUT = 2.0


def committed_liveness(state: State) -> dict[str, Committed]:
    """Every member's committed liveness and heartbeat counts (O(members))."""
    return {m.name: Committed(m.liveness, m.beats, m.liveness_beats)
            for m in state.members.values()}


class LivenessController:
    name = "liveness"

    def __init__(self, period: float = PERIOD, metrics: ControlMetrics | None = None) -> None:
        self.period = period
        self.metrics = metrics if metrics is not None else ControlMetrics()

    async def run(self, lease: Lease) -> None:
        """Until cancelled: judge heartbeats on this leader's clock, commit transitions."""
        with lease.store.read() as state:
            tracker = LivenessTracker(time.monotonic, offline_threshold(state))
            tracker.start(committed_liveness(state))
        log.info("judging liveness with %g s of grace", tracker.threshold)
        self.metrics.offline_at.clear()  # verdicts of an earlier leadership may be stale
        self.metrics.heartbeat_ages = tracker.ages
        try:
            while True:
                with lease.store.read() as state:
                    tracker.threshold = offline_threshold(state)
                    changes = tracker.transitions(committed_liveness(state))
                if changes:
                    await asyncio.gather(*(self._judge(lease, change, tracker.threshold)
                                           for change in changes))
                await asyncio.sleep(self.period)
        finally:
            self.metrics.heartbeat_ages = None

    async def _judge(self, lease: Lease, change: Transition, threshold: float) -> None:
        """Commit a verdict and, once committed, count it as of when it was judged."""
        judged_at = time.monotonic()
        if await _commit(lease, change, threshold):
            self.metrics.judged(change.name, change.status, judged_at)


async def _commit(lease: Lease, change: Transition, threshold: float) -> bool:
    """Commit one verdict; whether it committed."""
    try:
        await lease.submit("member.liveness", timeout=SUBMIT_TIMEOUT, name=change.name,
                           status=change.status, beats=change.beats)
    except Exception as exc:  # noqa: BLE001 - stale or not committed: judged again next look
        log.info("liveness of %s not changed to %s: %s", change.name, change.status, exc)
        return False
    if change.status == "OFFLINE":
        log.warning("member %s is OFFLINE: no heartbeat for over %g s on the leader's clock",
                    change.name, threshold)
    else:
        log.warning("member %s is ONLINE again", change.name)
    return True
