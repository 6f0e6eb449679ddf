"""What each member has promised to its instances, kept as running totals.

Every instance carries its demand (from its expanded ``limits.cpu``, ``limits.memory``
and root disk ``size``; see ``corral_shared.resources``) and its placement group (expanded
``placement.group``). ``state.reserved`` holds the sum of the demands per member and
``state.grouped`` the instances of each group per member, so apply re-validates a
placement in O(1) however many instances there are. Every change of an instance's
location, limits or profiles goes through these functions; ``recompute`` rebuilds the
totals from scratch (old snapshots, and tests that compare).
"""

from __future__ import annotations

from cluster.state import validate
from cluster.state.model import Instance, State
from corral_shared.resources import DEFAULTS, ZERO, Resources, demand_of

GROUP_KEY = "placement.group"  # scheduler.keys.INSTANCE_GROUP_KEY (LXD's key)


Footprint = tuple[Resources, str]  # demand, placement group


def demand(state: State, inst: Instance) -> Resources:
    """The instance's demand, its profiles applied."""
    return footprint(state, inst)[0]


def footprint(state: State, inst: Instance) -> Footprint:
    """The instance's demand and placement group, its profiles applied."""
    profiles = [{"config": state.profiles[p].config, "devices": state.profiles[p].devices}
                for p in inst.profiles if p in state.profiles]
    config, devices = validate.expand(profiles, inst.config, inst.devices)
    return expanded_demand(inst.type, config, devices), config.get(GROUP_KEY, "")


def expanded_demand(kind: str, config: dict[str, str],
                    devices: dict[str, dict[str, str]]) -> Resources:
    """The demand of an instance of type ``kind`` whose expanded config and devices are
    given; a value apply let through but the scheduler cannot read (none should exist)
    counts as the type's default rather than stopping the log."""
    try:
        return demand_of(kind, config, devices)
    except ValueError:
        return DEFAULTS.get(kind, ZERO)


def totals(state: State) -> dict[str, Resources]:
    """The per-member totals (rebuilt first for a snapshot older than them)."""
    if state.reserved is None or state.grouped is None:
        recompute(state)
    assert state.reserved is not None
    return state.reserved


def group_members(state: State, group: str) -> dict[str, int]:
    """How many instances of placement group ``group`` each member holds (a moving
    instance counts on both ends). Read-only for the caller."""
    totals(state)
    assert state.grouped is not None
    return state.grouped.get(group, {})


def _count(state: State, group: str, member: str, change: int) -> None:
    if not group:
        return
    assert state.grouped is not None
    counts = state.grouped.setdefault(group, {})
    left = counts.get(member, 0) + change
    if left > 0:
        counts[member] = left
    else:
        counts.pop(member, None)
        if not counts:
            del state.grouped[group]


def reserved(state: State, member: str) -> Resources:
    return totals(state).get(member, ZERO)


def add(state: State, inst: Instance, known: Footprint | None = None) -> None:
    """Count ``inst`` (placed at ``inst.location``) with its current demand and group
    (``known`` when the caller has just computed them)."""
    hold(state, inst, inst.location, known or footprint(state, inst))


def hold(state: State, inst: Instance, member: str, known: Footprint) -> None:
    """Count ``inst`` on ``member`` (its location, or the target of its move)."""
    sums = totals(state)
    inst.demand, inst.group = known
    sums[member] = sums.get(member, ZERO) + inst.demand
    _count(state, inst.group, member, 1)


def release(state: State, inst: Instance, member: str = "") -> None:
    """Stop counting ``inst`` on ``member`` (default: its location; it was deleted, or
    left)."""
    member = member or inst.location
    sums = totals(state)
    left = sums.get(member, ZERO) - inst.demand
    if left == ZERO:
        sums.pop(member, None)
    else:
        sums[member] = left
    _count(state, inst.group, member, -1)


def refresh(state: State, inst: Instance) -> None:
    """After a change of the instance's config, devices or profiles."""
    release(state, inst)
    add(state, inst)


def recompute(state: State) -> None:
    state.reserved, state.grouped = {}, {}
    for inst in state.instances.values():
        known = footprint(state, inst)
        for member in (inst.location, inst.moving_to):
            if member:
                hold(state, inst, member, known)
