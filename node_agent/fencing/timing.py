"""The timing that makes self-fencing safe: the lease inequality and its defaults (pure).

A member renews its fencing lease with every heartbeat the cluster *acknowledged*
(``member.heartbeat`` committed): the lease runs from the moment that heartbeat was sent,
on the member's monotonic clock. When the lease runs out the member's watchdog (or the
daemon itself) kills the member's HA instances. The Raft leader marks the member OFFLINE
once it has applied no heartbeat of it for ``threshold`` seconds on the leader's clock;
only then may failover start the HA instances elsewhere. The fence must be complete first.

Derivation. Let a heartbeat be sent at real time ``S`` and let clock rates differ from
real time by at most ``drift`` (5 %: a clock may run that much fast or slow).

- The leader hears the beat (applies it) no earlier than it was sent: at ``H >= S``.
- The leader's OFFLINE verdict comes once ``threshold`` seconds have passed on the
  leader's clock since ``H``; a fast leader clock makes that at least
  ``threshold / (1 + drift)`` of real time. So OFFLINE >= ``S + threshold/(1+drift)``.
  (Every later beat, later leaders' grace and the liveness controller's polling only make
  it later.)
- The member's lease ends ``lease`` seconds after ``S`` on the member's clock; a slow
  member clock makes that at most ``lease * (1 + drift)`` of real time. The watchdog
  looks every ``check_period`` (its own clock: up to ``check_period * (1 + drift)``) and
  the kill takes at most ``kill_budget`` (signal delivery, a late wake-up of the
  watchdog). So the fence is complete by
  ``S + (lease + check_period) * (1 + drift) + kill_budget``.

Hence the inequality corral keeps::

    (lease + check_period) * (1 + drift) + kill_budget  <=  threshold / (1 + drift)

(it implies the looser ``lease*(1+drift) + check_period + kill_budget <= ...``, in which
the check period's own drift is not counted). ``fencing_lease`` is the largest lease that
satisfies it. A heartbeat that is not acknowledged but commits later only makes the leader
hear the member later: the member fenced earlier than it had to, never later.

Patroni's rule ``loop_wait + 2 * retry_timeout <= ttl`` says the lease survives one lost
heartbeat: with ``loop_wait`` = the heartbeat period, ``retry_timeout`` = how long a
heartbeat's commit may take (its submit timeout) and ``ttl`` = the lease, a beat may fail
after a full timeout and the next one still renew in time. ``fencing_lease`` refuses a
threshold whose lease would break it (ValueError).

Defaults: threshold 4 s (failover median <= 5 s), heartbeat every 0.5 s with a 0.5 s
submit timeout, drift 5 %, check period 0.1 s, kill budget 0.5 s: a lease of ~3.05 s at
the default threshold and ~2.14 s at the minimum (3 s); Patroni's left side is 1.5 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corral_shared.liveness import DEFAULT_OFFLINE_THRESHOLD as DEFAULT_OFFLINE_THRESHOLD
from corral_shared.liveness import MIN_OFFLINE_THRESHOLD as MIN_OFFLINE_THRESHOLD

HEARTBEAT_PERIOD = 0.5  # s between heartbeats (Patroni's loop_wait)
HEARTBEAT_SUBMIT_TIMEOUT = 0.5  # s a heartbeat's commit may take (Patroni's retry_timeout)
DRIFT = 0.05  # the largest clock-rate error, either way
CHECK_PERIOD = 0.1  # s between the watchdog's (and the daemon's) looks at the lease
KILL_BUDGET = 0.5  # s from a look that finds the lease out to the processes gone


@dataclass(frozen=True)
class Timing:
    """The figures of the inequality; the defaults are corral's."""

    heartbeat_period: float = HEARTBEAT_PERIOD
    submit_timeout: float = HEARTBEAT_SUBMIT_TIMEOUT
    drift: float = DRIFT
    check_period: float = CHECK_PERIOD
    kill_budget: float = KILL_BUDGET


DEFAULT = Timing()


def fence_complete_by(lease: float, timing: Timing = DEFAULT) -> float:
    """Real seconds after a heartbeat was sent by which its lease's fence is complete."""
    return (lease + timing.check_period) * (1 + timing.drift) + timing.kill_budget


def offline_no_sooner(threshold: float, timing: Timing = DEFAULT) -> float:
    """Real seconds after a heartbeat was sent before the leader can judge OFFLINE."""
    return threshold / (1 + timing.drift)


def fence_before_offline(lease: float, threshold: float, timing: Timing = DEFAULT) -> bool:
    """corral's inequality: the fence is complete before the OFFLINE verdict."""
    return fence_complete_by(lease, timing) <= offline_no_sooner(threshold, timing)


def patroni_rule(lease: float, timing: Timing = DEFAULT) -> bool:
    """``loop_wait + 2*retry_timeout <= ttl``: one lost heartbeat does not fence."""
    return timing.heartbeat_period + 2 * timing.submit_timeout <= lease


def fencing_lease(threshold: float, timing: Timing = DEFAULT) -> float:
    """The longest lease that keeps both rules for ``threshold`` (seconds).

    An infinite threshold (the leader never judges OFFLINE) gives an infinite lease.
    Raises ValueError when no lease does (the threshold is too short for the heartbeat
    timing, or not a positive number)."""
    if not threshold > 0:
        raise ValueError(f"offline threshold must be a positive number of seconds, "
                         f"not {threshold!r}")
    if math.isinf(threshold):
        return math.inf
    room = offline_no_sooner(threshold, timing) - timing.kill_budget
    lease = room / (1 + timing.drift) - timing.check_period
    while lease > 0 and not fence_before_offline(lease, threshold, timing):
        lease = math.nextafter(lease, 0.0)  # float rounding: never a hair too long
    if not patroni_rule(lease, timing):
        raise ValueError(
            f"an offline threshold of {threshold:g} s leaves a fencing lease of "
            f"{lease:.3f} s, shorter than one heartbeat period plus two submit timeouts "
            f"({timing.heartbeat_period + 2 * timing.submit_timeout:g} s)")
    return lease
