"""What the HA controller must commit, given the state and the leader's clock: pure.

For every instance, one of:
- ``Holders``: its replica holders are not what ``cluster.ha.replicas`` asks (a holder
  left the cluster, went OFFLINE or can no longer hold it; HA was turned off; or it has
  too few). Kept holders stay first; new ones are chosen by the scheduler among the
  ONLINE members that could run it (the same filters as a placement: capacity, disk,
  type, not a witness), so a replica is never put where the instance could not start.
- ``Failover``: its member is OFFLINE (as the leader committed; by then the member has
  fenced itself, ``node_agent/fencing``). The target is chosen by the scheduler among the
  ONLINE holders of a complete replica shipped under the current placement epoch and no
  older than ``cluster.ha.max_lag`` (when set), as Patroni's
  ``maximum_lag_on_failover``. The replica's age is recorded either way.
- ``Waiting``: it must fail over and nothing fits: the reason is committed (shown by the
  API and ``corral list``) and the next look tries again, so it is placed once capacity
  or a replica appears. Cleared when it is no longer waiting.

An instance held by an intent or a move is left to that intent. Being a function of the
committed state, the plan is the same on a new leader: nothing is lost with the old one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cluster.controllers.control_metrics import PlaceFn, unrecorded
from cluster.state import ha
from cluster.state.apply_instances import expanded
from cluster.state.apply_members import OFFLINE, ONLINE, member_status
from cluster.state.cluster_view import view_from_state
from cluster.state.model import Instance, State
from scheduler.request import PlacementRequest, request_for


@dataclass(frozen=True)
class Holders:
    uid: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Failover:
    uid: str
    name: str
    target: str
    placement_epoch: int
    lag: float | None


@dataclass(frozen=True)
class Waiting:
    uid: str
    reason: str


Step = Holders | Failover | Waiting


def concerned(state: State) -> list[str]:
    """The names of the instances HA may have to act on: HA ones, and those with
    holders or a waiting reason left from when they were. O(instances)."""
    return [inst.name for inst in state.instances.values()
            if inst.replicas or inst.ha_waiting or ha.ha_enabled(state, inst)]


def plan_ha(state: State, now: float, names: Iterable[str] | None = None,
            place: PlaceFn = unrecorded) -> list[Step]:
    """Every step due now for the instances ``names`` (default: all), failovers first
    (they are what users wait for). ``place`` runs the scheduler (the controller's
    counts its runs)."""
    failovers: list[Step] = []
    others: list[Step] = []
    chosen = (state.instances.values() if names is None else
              [state.instances[n] for n in names if n in state.instances])
    for inst in chosen:
        if inst.intent or inst.moving_to or inst.power == "Deleted":
            continue
        enabled = ha.ha_enabled(state, inst)
        if not enabled:
            if inst.replicas:
                others.append(Holders(inst.uid, ()))
            if inst.ha_waiting:
                others.append(Waiting(inst.uid, ""))
            continue
        member = state.members.get(inst.location)
        if member is not None and member_status(member) == OFFLINE:
            failovers.append(_failover(state, inst, now, place))
            continue
        if inst.ha_waiting:
            others.append(Waiting(inst.uid, ""))
        holders = _holders(state, inst, place)
        if holders is not None:
            others.append(holders)
    return failovers + others


def _request(state: State, inst: Instance, purpose: str,
             exclude: frozenset[str]) -> PlacementRequest | str:
    config, devices = expanded(state, inst.config, inst.devices,
                               [p for p in inst.profiles if p in state.profiles])
    try:
        return request_for(f"{inst.uid}-{purpose}", inst.name, inst.type, inst.architecture,
                           config, devices, exclude=exclude)
    except ValueError as exc:
        return str(exc)


def _failover(state: State, inst: Instance, now: float, place: PlaceFn) -> Step:
    wanted = ha.settings(state, inst)
    fresh: dict[str, float] = {}
    stale: list[str] = []
    for name, replica in (inst.replicas or {}).items():
        member = state.members.get(name)
        if member is None or member_status(member) != ONLINE or not replica.snapshot:
            continue
        if replica.epoch != inst.epoch:
            continue
        lag = max(0.0, now - replica.synced_at)
        if wanted.max_lag is not None and lag > wanted.max_lag:
            stale.append(f"{name} ({lag:.1f}s old)")
            continue
        fresh[name] = lag
    if not fresh:
        why = ("no ONLINE member holds a complete replica" if not stale else
               f"every replica is older than cluster.ha.max_lag={wanted.max_lag:g}s: "
               + ", ".join(stale))
        return Waiting(inst.uid, f"Failover from {inst.location} waits: {why}")
    request = _request(state, inst, f"failover-{inst.epoch}", frozenset({inst.location}))
    if isinstance(request, str):
        return Waiting(inst.uid, f"Failover from {inst.location} waits: {request}")
    plan = place("ha_failover", view_from_state(state, members=sorted(fresh)), request)
    if plan.member is None:
        return Waiting(inst.uid, f"Failover from {inst.location} waits: no replica holder "
                                 f"can take it: {plan.error}")
    return Failover(inst.uid, inst.name, plan.member, inst.epoch, fresh[plan.member])


def _holders(state: State, inst: Instance, place: PlaceFn) -> Holders | None:
    """The holders to commit, or None when the current ones are right.

    ONLINE holders stay; the scheduler fills the rest from the ONLINE members that could
    run the instance. Only when it cannot are OFFLINE holders kept (a stale replica is
    better than none, and they may come back)."""
    wanted = ha.settings(state, inst).replicas
    current = list(inst.replicas or {})
    valid = [name for name in current
             if (member := state.members.get(name)) is not None and name != inst.location
             and ha.can_hold(member, inst.type)]
    online = [name for name in valid if member_status(state.members[name]) == ONLINE]
    chosen = online[:wanted]
    while len(chosen) < wanted:
        candidates = [name for name, member in state.members.items()
                      if name != inst.location and name not in chosen
                      and member_status(member) == ONLINE and ha.can_hold(member, inst.type)]
        request = _request(state, inst, f"replica-{len(chosen)}",
                           frozenset({inst.location, *chosen}))
        if not candidates or isinstance(request, str):
            break
        plan = place("ha_replica", view_from_state(state, members=candidates), request)
        if plan.member is None:
            break
        chosen.append(plan.member)
    chosen += [name for name in valid if name not in chosen][:max(0, wanted - len(chosen))]
    return None if chosen == current else Holders(inst.uid, tuple(chosen))
