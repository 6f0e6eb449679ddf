"""The HA controller: keeps HA instances' replica holders and fails them over.

On the leader, every ``period`` it plans on its replica (``ha_plan.plan_ha``, the
leader's clock giving replicas' ages) and commits each step under the lease's epoch.
Failover is one command (``instance.failover``): it moves the instance's desired
location under a new placement epoch, and the new member's agent promotes its replica
and starts it, as it converges on any desired state. So the "intent" of a failover is
the committed state itself: a new leader that takes over mid-way plans the same steps
from it, and apply refuses a step already taken (its placement epoch is stale).
"""

from __future__ import annotations

import asyncio
import logging
import time

from cluster.controllers.ha_plan import Failover, Holders, Step, Waiting, concerned, plan_ha
from cluster.controllers.runtime import Lease

log = logging.getLogger(__name__)
PERIOD = 0.25  # seconds between looks: the most a failover comes late by
SUBMIT_TIMEOUT = 5.0
RESCAN = 5.0  # seconds between full scans for the instances HA concerns


class HaController:
    name = "ha"

    def __init__(self, period: float = PERIOD, rescan: float = RESCAN) -> None:
        self.period = period
        self.rescan = rescan

    async def run(self, lease: Lease) -> None:
        """Until cancelled: plan, commit, look again. Each look covers the instances HA
        concerns, found by a full scan every ``rescan`` seconds (a scan of every
        instance four times a second would not scale to a large cluster)."""
        names: list[str] = []
        scanned = float("-inf")
        while True:
            with lease.store.read() as state:
                if time.monotonic() - scanned >= self.rescan:
                    names, scanned = concerned(state), time.monotonic()
                steps = plan_ha(state, time.time(), names)
                shown = {state.instances[n].uid: state.instances[n].ha_waiting
                         for n in names if n in state.instances}
            for step in steps:
                if isinstance(step, Waiting) and shown.get(step.uid, "") == step.reason:
                    continue
                await _commit(lease, step)
            await asyncio.sleep(self.period)


async def _commit(lease: Lease, step: Step) -> None:
    try:
        if isinstance(step, Failover):
            await lease.submit("instance.failover", timeout=SUBMIT_TIMEOUT, uid=step.uid,
                               name=step.name, target=step.target,
                               placement_epoch=step.placement_epoch, lag=step.lag)
            age = "never synced" if step.lag is None else f"replica {step.lag:.1f}s old"
            log.warning("failed %s over to %s (%s)", step.name, step.target, age)
        elif isinstance(step, Holders):
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
