"""The daemon's side of the fencing lease: when it holds, and what it writes and kills.

``SelfFence`` keeps the lease on the member's monotonic clock. Only an *acknowledged*
heartbeat renews it, from the moment that heartbeat was sent (``timing``). A daemon that
has just started holds no lease of its own until its first acknowledged heartbeat (by
then its replica has applied everything committed before that heartbeat, so its desired
state is current), but it keeps the deadline the daemon before it left in the lease
file, for the processes that daemon left running: a quick restart does not fence them,
a slow one does.

Two questions, two answers:
- ``expired``: the lease ran out; the member's HA instances must be dead (the watchdog
  kills them, and so does the daemon, ``hard_stop``, in case the watchdog is gone);
- ``fenced``: expired, or no heartbeat acknowledged yet; no HA instance may start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from node_agent.fencing import proc
from node_agent.fencing.lease_file import Lease, Listed, lease_path, write_lease

Clock = Callable[[], float]


class SelfFence:
    """The member's fencing lease of ``lease_seconds`` on ``clock`` (monotonic).

    ``carried``: the deadline a previous daemon left in the lease file, if any (kept,
    but never longer than one lease from now)."""

    def __init__(self, lease_seconds: float, clock: Clock = time.monotonic,
                 carried: float | None = None) -> None:
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.born = clock()
        self.deadline = self.born if carried is None else min(carried,
                                                              self.born + lease_seconds)
        self.acknowledged = False
        self._last_sent: float | None = None

    def renewed(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` (this clock) was acknowledged: the lease runs
        until ``sent_at + lease_seconds`` (never shortened by an older beat)."""
        self.acknowledged = True
        self._last_sent = sent_at if self._last_sent is None else max(sent_at,
                                                                       self._last_sent)
        self.deadline = max(self.deadline, sent_at + self.lease_seconds)

    def set_lease(self, seconds: float) -> None:
        """A new lease length (the offline threshold changed). A shorter one binds at
        once: the lease never reaches past the last acknowledged beat plus it."""
        self.lease_seconds = seconds
        since = self.born if self._last_sent is None else self._last_sent
        self.deadline = min(self.deadline, since + seconds)

    def expired(self, now: float | None = None) -> bool:
        """The lease ran out: HA instances here must be dead."""
        return (self.clock() if now is None else now) > self.deadline

    def fenced(self, now: float | None = None) -> bool:
        """No HA instance may start: the lease ran out, or none was acknowledged yet."""
        return not self.acknowledged or self.expired(now)

    def since(self, now: float | None = None) -> float | None:
        """When the current fence began on this clock; None while not fenced."""
        now = self.clock() if now is None else now
        if self.expired(now):
            return self.deadline
        return None if self.acknowledged else self.born

    def remaining(self, now: float | None = None) -> float:
        """Seconds of lease left (negative once it ran out)."""
        return self.deadline - (self.clock() if now is None else now)


def listed_process(name: str, kind: str, pid: int) -> Listed | None:
    """The lease entry of a running instance's process (None if it is already gone)."""
    start = proc.starttime(pid)
    return None if pid <= 0 or start is None else Listed(name, kind, pid, start)


def write_member_lease(state_dir: Path, deadline: float, listed: Iterable[Listed],
                       fenced: Iterable[str]) -> Lease:
    """Write this daemon's lease file (blocking; raises OSError)."""
    me = os.getpid()
    lease = Lease(me, deadline, tuple(listed), tuple(sorted(fenced)),
                  proc.starttime(me) or 0, proc.boot_id())
    write_lease(lease_path(state_dir), lease)
    return lease


def hard_stop(listed: Iterable[Listed]) -> list[Listed]:
    """SIGKILL each listed process that is still the one listed; the ones killed. The
    daemon's own fence, for when the watchdog is gone (blocking, /proc reads)."""
    return [item for item in listed if proc.kill_if_same(item.pid, item.starttime)]
