"""What each member has promised to its instances, kept as a running total.

Every instance carries its demand (from its expanded ``limits.cpu``, ``limits.memory``
and root disk ``size``; see ``scheduler.resources``) and ``state.reserved`` holds the sum
per member, so apply re-validates a placement in O(1) however many instances there are.
Every change of an instance's location, limits or profiles goes through these functions;
``recompute`` rebuilds the totals from scratch (old snapshots, and tests that compare).
"""

from __future__ import annotations

from cluster.state import validate
from cluster.state.model import Instance, State
from scheduler.resources import DEFAULTS, ZERO, Resources, demand_of


def demand(state: State, inst: Instance) -> Resources:
    """The instance's demand, its profiles applied."""
    profiles = [{"config": state.profiles[p].config, "devices": state.profiles[p].devices}
                for p in inst.profiles if p in state.profiles]
    config, devices = validate.expand(profiles, inst.config, inst.devices)
    return expanded_demand(inst.type, config, devices)


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
    if state.reserved is None:
        recompute(state)
    assert state.reserved is not None
    return state.reserved


def reserved(state: State, member: str) -> Resources:
    return totals(state).get(member, ZERO)


def add(state: State, inst: Instance, known: Resources | None = None) -> None:
    """Count ``inst`` (placed at ``inst.location``) with its current demand (``known``
    when the caller has just computed it)."""
    sums = totals(state)
    inst.demand = demand(state, inst) if known is None else known
    sums[inst.location] = sums.get(inst.location, ZERO) + inst.demand


def release(state: State, inst: Instance) -> None:
    """Stop counting ``inst`` (deleted, or leaving its member)."""
    sums = totals(state)
    left = sums.get(inst.location, ZERO) - inst.demand
    if left == ZERO:
        sums.pop(inst.location, None)
    else:
        sums[inst.location] = left


def refresh(state: State, inst: Instance) -> None:
    """After a change of the instance's config, devices or profiles."""
    release(state, inst)
    add(state, inst)


def recompute(state: State) -> None:
    sums: dict[str, Resources] = {}
    for inst in state.instances.values():
        inst.demand = demand(state, inst)
        for member in (inst.location, inst.moving_to):
            if member:
                sums[member] = sums.get(member, ZERO) + inst.demand
    state.reserved = sums
