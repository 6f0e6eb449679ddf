"""The HA chaos checker: the issue's three checks over plain records (no cluster needed).

The HA driver (``ha_run.py``) records, while a nemesis kills, cuts off or freezes hosts
that run HA instances (containers, and a VM) whose counter ticks every ``TICK`` s on their
disk:

- ``Sample``: every ~100 ms, for each HA instance, the hosts whose ``/proc`` shows it
  running (a container's ``[lxc monitor]``, a VM's QEMU), read from the processes, not
  from corral's view;
- ``Failover``: per instance that a fault moved, the last counter value its old copy
  wrote (read from the old host's rootfs or VM disk once that copy was gone), the value the new
  copy started from (the promoted replica's), the replication interval and the
  detection time (fault to the old copy's last sighting: its writes until then may
  not have been shipped);
- ``Return``: per host that came back, the instances that left it and the window in
  which none of them may run there (from its return to the next fault).

And ``check`` finds, as ``Violation`` records:

1. ``double-running``: a sample with an instance on two hosts at once;
2. ``counter``: a failover whose new copy lost more than ``(interval + detection) /
   TICK`` ticks plus ``slack``, went ahead of what the old copy wrote (the two copies
   diverged), or cannot be judged (no failover, a counter that could not be read);
3. ``returning host``: a returned host seen running an instance that left it.

Like the rest of the checker it imports nothing of ``cluster``, ``node_agent`` or
``scheduler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TICK = 0.1
"""Seconds between two counter writes at most as fast (a tick also spends time writing)."""
SLACK_TICKS = 10
"""Ticks of loss allowed beyond the bound: a shipment's own duration (its snapshot is
older than its arrival) and the sampler's 100 ms granularity on the detection time."""

DOUBLE = "double-running"
COUNTER = "counter"
RETURNING = "returning host"


@dataclass(frozen=True, slots=True)
class Sample:
    """At ``t`` (seconds, one clock for the whole run), ``instance`` runs on ``hosts``."""

    t: float
    instance: str
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Failover:
    """One instance moved off ``old_host`` by a fault; a counter is None when it could
    not be read (no failover, or the old copy's file was unreadable)."""

    instance: str
    old_host: str
    last_written: int | None
    resumed_from: int | None
    interval: float
    detection: float

    def bound(self, slack: int = SLACK_TICKS) -> int:
        """The most ticks the new copy may have lost."""
        return math.ceil((self.interval + max(0.0, self.detection)) / TICK - 1e-9) + slack

    @property
    def loss(self) -> int | None:
        """Ticks the new copy is behind the old one's last write (None: unknown)."""
        if self.last_written is None or self.resumed_from is None:
            return None
        return self.last_written - self.resumed_from


@dataclass(frozen=True, slots=True)
class Return:
    """``host`` came back at ``back_at``; until ``until`` none of ``left`` (the instances
    failed over away from it) may run there."""

    host: str
    left: tuple[str, ...]
    back_at: float
    until: float


@dataclass(frozen=True, slots=True)
class Violation:
    check: str  # DOUBLE, COUNTER or RETURNING
    detail: str


@dataclass(frozen=True, slots=True)
class HaReport:
    """What ``check`` found."""

    samples: int
    double_running: int  # samples with an instance on two hosts or more
    failovers: int  # failovers whose new copy ran (its counter was read)
    max_loss: int | None  # ticks, the worst failover (None: no failover judged)
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self, faults: int) -> str:
        """The one-line summary, as the register suite's ``Summary.line``."""
        loss = "n/a" if self.max_loss is None else f"{self.max_loss} ticks"
        returning = sum(v.check == RETURNING for v in self.violations)
        return (f"ha chaos: {faults} faults injected, {self.failovers} failovers, "
                f"max counter loss {loss}, {self.double_running} double-running samples "
                f"of {self.samples}, {returning} instances started by a returning host, "
                f"{len(self.violations)} violations")


def double_running(samples: Iterable[Sample]) -> list[Violation]:
    """One violation per episode (consecutive samples of one instance on the same set
    of two hosts or more), saying when and how many samples."""
    found: list[Violation] = []
    open_: dict[str, tuple[frozenset[str], float, float, int]] = {}

    def close(instance: str) -> None:
        hosts, first, last, count = open_.pop(instance)
        found.append(Violation(DOUBLE, f"{instance} ran on {', '.join(sorted(hosts))} at once "
                                       f"from t={first:.2f} to t={last:.2f} ({count} samples)"))

    for s in sorted(samples, key=lambda s: s.t):
        hosts = frozenset(s.hosts)
        episode = open_.get(s.instance)
        if episode is not None and episode[0] != hosts:
            close(s.instance)
            episode = None
        if len(hosts) > 1:
            if episode is None:
                open_[s.instance] = (hosts, s.t, s.t, 1)
            else:
                open_[s.instance] = (hosts, episode[1], s.t, episode[3] + 1)
    for instance in sorted(open_):
        close(instance)
    return found


def counter_losses(failovers: Iterable[Failover], slack: int = SLACK_TICKS) -> list[Violation]:
    """Each failover's counter judged against its bound (see the module docstring)."""
    found = []
    for f in failovers:
        where = f"{f.instance} off {f.old_host}"
        loss = f.loss
        if f.resumed_from is None:
            found.append(Violation(COUNTER, f"{where}: no new copy's counter was read "
                                            "(no failover?)"))
        elif f.last_written is None:
            found.append(Violation(COUNTER, f"{where}: the old copy's last counter value "
                                            "could not be read"))
        elif loss is not None and loss > f.bound(slack):
            found.append(Violation(COUNTER, f"{where}: lost {loss} ticks (wrote "
                                            f"{f.last_written}, resumed from {f.resumed_from})"
                                            f", more than the bound {f.bound(slack)} "
                                            f"(interval {f.interval:g} s, detection "
                                            f"{f.detection:.1f} s)"))
        elif loss is not None and loss < 0:
            found.append(Violation(COUNTER, f"{where}: resumed from {f.resumed_from}, ahead "
                                            f"of the old copy's last write {f.last_written}: "
                                            "the copies diverged"))
    return found


def returning_hosts(returns: Iterable[Return], samples: Sequence[Sample]) -> list[Violation]:
    """A returned host seen running, within its window, an instance that left it."""
    found = []
    for r in returns:
        seen = sorted({(s.instance, s.t) for s in samples
                       if s.instance in r.left and r.host in s.hosts
                       and r.back_at <= s.t <= r.until}, key=lambda x: x[1])
        for instance in dict.fromkeys(name for name, _ in seen):
            times = [t for name, t in seen if name == instance]
            found.append(Violation(RETURNING, f"{r.host} came back at t={r.back_at:.2f} and "
                                              f"ran {instance}, which had left it, from "
                                              f"t={times[0]:.2f} ({len(times)} samples)"))
    return found


def check(samples: Sequence[Sample], failovers: Sequence[Failover],
          returns: Sequence[Return], slack: int = SLACK_TICKS) -> HaReport:
    """The three checks over one run's records."""
    losses = [f.loss for f in failovers if f.loss is not None]
    return HaReport(
        samples=len(samples),
        double_running=sum(len(set(s.hosts)) > 1 for s in samples),
        failovers=sum(f.resumed_from is not None for f in failovers),
        max_loss=max(losses) if losses else None,
        violations=tuple(double_running(samples) + counter_losses(failovers, slack)
                         + returning_hosts(returns, samples)))
