"""What the agent must do to an instance's power state: desired against observed.

The replicated record says what is wanted (``Want``: power, a boot counter that a
restart bumps, how to stop or start, the generation) and what the agent last reported
(``Seen``). ``plan_power`` compares both with the status the host shows now and returns
the idempotent steps that bring the instance there. It is a pure function, so it is the
same after a restart, a crash or a failover: there is no queue of power actions to
replay, only a difference to close.

Three cases are told apart when the host shows a wanted-running instance stopped:
- a change not yet carried out (``Seen.generation`` behind, or a restart not yet done):
  start it;
- the host rebooted since the last report (``Seen.host`` names this member with another
  boot id), or this member's self-fence killed it (``fenced``): start it again, as LXD
  starts what ran before a reboot;
- otherwise it stopped by itself (a poweroff inside): that is reported, not undone
  (``self_stopped``), as in LXD.
A converged instance that runs while it should be stopped is left alone: only the
agent's own changes are enforced, never a fight with an administrator on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POWER_KINDS = frozenset({"start", "stop", "restart", "freeze", "unfreeze"})


@dataclass(frozen=True)
class Want:
    """The desired power state of one instance (from its replicated record)."""

    power: str  # Running|Stopped|Frozen|Deleted
    boots: int  # restarts asked for
    generation: int
    args: dict[str, Any]  # how: stateful, force, timeout (of the last power change)
    moving: bool = False  # a move holds it: only changes of its own are carried out


@dataclass(frozen=True)
class Seen:
    """What the agent last reported for the instance (its replicated ``observed``)."""

    generation: int
    status: str
    boots: int
    host: str  # "member/boot id" of the host that reported ("" before it was kept)


@dataclass(frozen=True)
class PowerPlan:
    steps: tuple[str, ...]  # step kinds for ``actions.perform``, in order
    self_stopped: bool = False  # report that it stopped by itself (no steps then)


NOTHING = PowerPlan(())


def host_token(member: str, boot_id: str) -> str:
    return f"{member}/{boot_id}"


def rebooted(seen_host: str, host: str) -> bool:
    """Whether ``host`` (this member now) booted since ``seen_host`` reported: the same
    member, another boot id. A report from another member (the instance moved here) or
    from before the field existed says nothing about a reboot."""
    member = host.split("/", 1)[0]
    return seen_host != host and seen_host.split("/", 1)[0] == member and "/" in seen_host


def plan_power(want: Want, seen: Seen, actual: str, host: str,
               fenced: bool = False) -> PowerPlan:
    """The steps that take an instance whose host shows ``actual`` to ``want``;
    ``fenced``: the member's self-fence stopped it (not the instance itself)."""
    if want.power == "Deleted" or actual not in ("Running", "Stopped", "Frozen"):
        return NOTHING
    changed = seen.generation < want.generation or want.boots > seen.boots
    restart = want.boots > seen.boots
    again = (fenced or rebooted(seen.host, host)) and not want.moving
    if want.power == "Running":
        if actual == "Stopped":
            if changed or again:
                return PowerPlan(("start",))
            return NOTHING if want.moving else PowerPlan((), self_stopped=True)
        if restart:
            return PowerPlan(("restart",))
        return PowerPlan(("unfreeze",)) if actual == "Frozen" and changed else NOTHING
    if want.power == "Frozen":
        if actual == "Running":
            return PowerPlan(("freeze",)) if changed else NOTHING
        if actual == "Stopped":
            if again:
                return PowerPlan(("start", "freeze"))
            if changed:  # the freeze step fails (LXD refuses), which settles on Stopped
                return PowerPlan(("freeze",))
            if want.moving:
                return NOTHING
            return PowerPlan((), self_stopped=True)
        return NOTHING
    if want.power == "Stopped" and actual != "Stopped" and changed:
        return PowerPlan(("stop",))
    return NOTHING


def power_converged(want: Want, seen: Seen) -> bool:
    """Whether the last report covers every power change asked for."""
    return seen.generation >= want.generation and seen.boots >= want.boots
