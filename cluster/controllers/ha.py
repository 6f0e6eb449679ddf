"""The HA controller: keeps HA instances' replica holders and fails them over.

On the leader, every ``period`` it plans on its replica (``ha_plan.plan_ha``, the
leader's clock giving replicas' ages) and commits each step under the lease's epoch.
Failover is one command (``instance.failover``): it moves the instance's desired
location under a new placement epoch, and the new member's agent promotes its replica
and starts it, as it converges on any desired state. So the "intent" of a failover is
the committed state itself: a new leader that takes over mid-way plans the same steps
from it, and apply refuses a step already taken (its placement epoch is stale).

Metrics (``control_metrics.py``): the failovers committed, the time from the OFFLINE
verdict to the instance recovered on its new member (``failover_watch.py``), the
instances waiting for a target, and the scheduler runs of its plans.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cluster.controllers.control_metrics import ControlMetrics
from cluster.controllers.failover_watch import FailoverWatch, Watched
from cluster.controllers.ha_plan import Failover, Holders, Step, Waiting, concerned, plan_ha
from cluster.controllers.runtime import Lease

log = logging.getLogger(__name__)
PERIOD = 0.25  # seconds between looks: the most a failover comes late by
SUBMIT_TIMEOUT = 5.0
RESCAN = 5.0  # seconds between full scans for the instances HA concerns


class HaController:
    name = "ha"

    def __init__(self, period: float = PERIOD, rescan: float = RESCAN,
                 metrics: ControlMetrics | None = None) -> None:
        self.period = period
        self.rescan = rescan
        self.metrics = metrics if metrics is not None else ControlMetrics()

    async def run(self, lease: Lease) -> None:
        """Until cancelled: plan, commit, look again. Each look covers the instances HA
        concerns, found by a full scan every ``rescan`` seconds (a scan of every
        instance four times a second would not scale to a large cluster)."""
        names: list[str] = []
        scanned = float("-inf")
        watch = FailoverWatch()
        try:
            while True:
                with lease.store.read() as state:
                    if time.monotonic() - scanned >= self.rescan:
                        names, scanned = concerned(state), time.monotonic()
                    steps = plan_ha(state, time.time(), names, self.metrics.place)
                    shown = {state.instances[n].uid: state.instances[n].ha_waiting
                             for n in names if n in state.instances}
                    origins = {s.uid: state.instances[s.name].location for s in steps
                               if isinstance(s, Failover) and s.name in state.instances}
                    for seconds in watch.recovered(state, time.monotonic()):
                        self.metrics.failover_duration.observe(seconds)
                self.metrics.ha_waiting.set(waiting(steps))
                for step in steps:
                    if isinstance(step, Waiting) and shown.get(step.uid, "") == step.reason:
                        continue
                    done = await _commit(lease, step)
                    if isinstance(step, Failover) and done is not None:
                        self._failed_over(watch, step, origins.get(step.uid, ""), done)
                await asyncio.sleep(self.period)
        finally:
            self.metrics.ha_waiting.set(0)

    def _failed_over(self, watch: FailoverWatch, step: Failover, origin: str,
                     result: dict[str, Any]) -> None:
        """Count a committed failover; time it if this leader judged its member OFFLINE."""
        self.metrics.failovers.inc()
        since = self.metrics.offline_at.get(origin)
        if since is None:
            return
        watch.add(Watched(step.uid, step.name, step.target, int(result.get("epoch", 0)),
                          int(result.get("generation", 0)), since, time.monotonic()))


def waiting(steps: list[Step]) -> int:
    """How many instances of a plan wait for a failover target."""
    return sum(1 for step in steps if isinstance(step, Waiting) and step.reason)


async def _commit(lease: Lease, step: Step) -> dict[str, Any] | None:
    """Commit one step: what apply returned (``{}`` for none), or None if not committed."""
    try:
        if isinstance(step, Failover):
            found = await lease.submit("instance.failover", timeout=SUBMIT_TIMEOUT,
                                       uid=step.uid, name=step.name, target=step.target,
                                       placement_epoch=step.placement_epoch, lag=step.lag)
            age = "never synced" if step.lag is None else f"replica {step.lag:.1f}s old"
            log.warning("failed %s over to %s (%s)", step.name, step.target, age)
            return dict(found or {})
        if isinstance(step, Holders):
            await lease.submit("instance.ha_replicas", timeout=SUBMIT_TIMEOUT, uid=step.uid,
                               members=list(step.members))
            log.info("replicas of %s are held by %s", step.uid,
                     ", ".join(step.members) or "nobody")
        else:
            await lease.submit("instance.ha_waiting", timeout=SUBMIT_TIMEOUT, uid=step.uid,
                               reason=step.reason)
            if step.reason:
                log.warning("instance %s: %s", step.uid, step.reason)
    except Exception as exc:  # noqa: BLE001 - refused or not committed: planned again
        log.info("HA step %s not committed: %s", step, exc)
        return None
    return {}
