"""Which members changed liveness, judged on one clock: the Raft leader's own.

A plain class over an injected monotonic clock, so it is tested without sleeping. The
leader tells it when it heard a heartbeat (the count apply returned) and asks it which
committed statuses are wrong. It never reads a member's clock.

Deadlines start over whenever leadership starts (``start``): every member committed
ONLINE gets a full threshold of grace, because the new leader has not heard anyone yet
and must not demote members merely for having been judged by another leader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

ONLINE, OFFLINE = "ONLINE", "OFFLINE"


@dataclass(frozen=True)
class Committed:
    """What the replicated state says of a member: its committed liveness, how many of its
    heartbeats committed (``beats``), and the count that status was judged on (``since``)."""

    status: str
    beats: int = 0
    since: int = 0


@dataclass(frozen=True)
class Transition:
    """A change of liveness to commit (``member.liveness``), judged on ``beats`` heartbeats."""

    name: str
    status: str
    beats: int


class LivenessTracker:
    """Deadlines of members on the leader's monotonic ``clock``.

    A member is alive while the last heartbeat heard from it (or the start of this
    leadership, for a member committed ONLINE) is at most ``threshold`` seconds old.
    """

    def __init__(self, clock: Callable[[], float], threshold: float) -> None:
        self.clock = clock
        self.threshold = threshold
        self._heard_at: dict[str, float | None] = {}  # None: not heard this leadership
        self._beats: dict[str, int] = {}

    def start(self, committed: Mapping[str, Committed]) -> None:
        """Begin a leadership: forget every deadline; members committed ONLINE get a
        threshold of grace from now, members committed OFFLINE stay so until heard."""
        now = self.clock()
        self._heard_at = {name: now if seen.status == ONLINE else None
                          for name, seen in committed.items()}
        self._beats = {name: seen.beats for name, seen in committed.items()}

    def heard(self, name: str, beats: int) -> None:
        """A heartbeat of ``name`` was applied, the ``beats``-th: it is alive now."""
        self._heard_at[name] = self.clock()
        self._beats[name] = max(beats, self._beats.get(name, 0))

    def ages(self) -> dict[str, float]:
        """Seconds since each member was last heard (or since ``start``, for a member
        committed ONLINE and not heard yet), as of the last look; members committed
        OFFLINE and not heard since have none."""
        now = self.clock()
        return {name: now - at for name, at in self._heard_at.items() if at is not None}

    def alive(self, name: str) -> bool:
        heard_at = self._heard_at.get(name)
        return heard_at is not None and self.clock() - heard_at <= self.threshold

    def transitions(self, committed: Mapping[str, Committed]) -> list[Transition]:
        """The members whose committed status differs from what this leader observed,
        sorted by name.

        ``committed`` is read from the leader's replica: a heartbeat count that grew
        since the last look is a heartbeat heard now (so polling the replica is enough,
        at the cost of at most one polling period of leniency). A member new to the
        tracker (it joined, or the replica just caught up) gets the same grace as at
        ``start``; a member no longer committed is forgotten. ONLINE is proposed only on
        a heartbeat newer than the one the member was judged OFFLINE on (apply would
        refuse it otherwise)."""
        self._observe(committed)
        changes = []
        for name in sorted(committed):
            seen, beats = committed[name], self._beats[name]
            if seen.status == ONLINE and not self.alive(name):
                changes.append(Transition(name, OFFLINE, beats))
            elif seen.status == OFFLINE and self.alive(name) and beats > seen.since:
                changes.append(Transition(name, ONLINE, beats))
        return changes

    def _observe(self, committed: Mapping[str, Committed]) -> None:
        now = self.clock()
        for name in self._heard_at.keys() - committed.keys():
            del self._heard_at[name]
            self._beats.pop(name, None)
        for name, seen in committed.items():
            if name not in self._heard_at:
                self._heard_at[name] = now if seen.status == ONLINE else None
                self._beats[name] = seen.beats
            elif seen.beats > self._beats.get(name, 0):
                self.heard(name, seen.beats)
