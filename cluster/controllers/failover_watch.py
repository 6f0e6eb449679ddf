"""When a committed failover has recovered its instance: pure, over the replicated state.

The HA controller commits ``instance.failover`` and moves on; the instance's new member
then creates it from its replica and starts it, and reports. ``FailoverWatch`` keeps the
failovers this leader committed and, on each look, says which have recovered (and how
long since their member was judged OFFLINE: ``corral_ha_failover_duration_seconds``) and
forgets those that never will (failed over again, deleted, their create or start
failed, or still not recovered after ``GIVE_UP`` seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.state.model import State

GIVE_UP = 900.0  # s: a failover not recovered by then is not timed
Outcome = Literal["recovered", "pending", "lost"]


@dataclass(frozen=True)
class Watched:
    """A committed failover: the instance ``name`` (``uid``) lives on ``target`` under
    placement ``epoch`` from ``generation`` on; ``since`` is when its member was judged
    OFFLINE and ``committed`` when the failover committed (the leader's monotonic clock).
    Looked up by name (O(1); a rename since loses it) and checked by uid."""

    uid: str
    name: str
    target: str
    epoch: int
    generation: int
    since: float
    committed: float


def outcome(state: State, watched: Watched) -> Outcome:
    """Whether the new member has reported the instance created and in its desired power
    state, under the failover's generation (or a later one)."""
    inst = state.instances.get(watched.name)
    if inst is None or (inst.uid, inst.location, inst.epoch) != (
            watched.uid, watched.target, watched.epoch):
        return "lost"
    seen = inst.observed
    if seen.generation < watched.generation:
        return "pending"
    if seen.error:  # a failed pass settles the desired state on what it saw: no retry
        return "lost"
    if seen.created and seen.status == inst.power:
        return "recovered"
    return "pending"


class FailoverWatch:
    """The failovers one leadership committed, until each recovers or is given up."""

    def __init__(self, give_up: float = GIVE_UP) -> None:
        self.give_up = give_up
        self.watched: dict[str, Watched] = {}

    def add(self, watched: Watched) -> None:
        self.watched[watched.uid] = watched

    def recovered(self, state: State, now: float) -> list[float]:
        """The seconds from verdict to recovery of each failover that recovered since the
        last look (forgetting them and the lost ones)."""
        durations = []
        for uid, watched in list(self.watched.items()):
            found = outcome(state, watched)
            if found == "recovered":
                durations.append(max(0.0, now - watched.since))
            if found != "pending" or now - watched.committed > self.give_up:
                del self.watched[uid]
        return durations
