"""Re-validation of a placement inside apply (Nomad's plan-apply check).

The API plans on a snapshot that may be stale by the time its command commits; apply
checks the chosen member again against the committed state, in O(1) members and
instances, so two concurrent launches can never overcommit a member. "Overcommit" is
past the member's schedulable capacity: its capacity times the cluster's allocation
ratios (``scheduler.cpu_allocation_ratio``, ``scheduler.memory_allocation_ratio``), read
here from the committed config, so a plan made under another ratio is judged by this one.
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.state import reservations
from cluster.state.apply_members import member_status
from cluster.state.cluster_view import capacity_of, member_view, placement_groups_from_state
from cluster.state.model import Member, State
from corral_shared.resources import DIMENSIONS, Resources, format_amount
from scheduler import keys, pipeline
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView


def placement_problem(state: State, *, member: str, name: str, type_: str,
                      architecture: str, demand: Resources, target: str = "",
                      placement_group: str = "", exclude: Iterable[str] = ()) -> str:
    """``""`` when ``member`` may take the instance now, else why not."""
    record = state.members.get(member)
    if record is None:
        return f"cluster member {member!r} not found"
    status = member_status(record)  # as committed by the leader: no clock in apply
    ratios = keys.allocation_ratios(state.config)
    # Only what the filters read: this one member (the instance count is for scoring).
    view = ClusterView(
        members={member: member_view(record, status, reservations.reserved(state, member), 0,
                                     ratios=ratios)},
        placement_groups=placement_groups_from_state(state, placement_group)
        if placement_group else {}, ratios=ratios)
    request = PlacementRequest(id=name, name=name, type=type_, architecture=architecture,
                               demand=demand, target=target, placement_group=placement_group,
                               exclude=frozenset(exclude))
    return pipeline.recheck(view, request, member)


def schedulable_of(state: State, record: Member) -> tuple[Resources, tuple[str, ...]]:
    """The member's schedulable capacity (capacity times the allocation ratios) and the
    dimensions it has not reported. O(1)."""
    capacity, unknown = capacity_of(record)
    return keys.allocation_ratios(state.config).schedulable(capacity), unknown


def member_usage(state: State, record: Member) -> dict[str, dict[str, float | None]]:
    """Per dimension, what placement sees of a member: its ``capacity`` (reported, with
    ``scheduler.capacity.*``; None when unknown), the ``allocation_ratio``, the
    ``schedulable`` amount (capacity x ratio) and the amount ``used`` by reservations, so a
    user can see why a placement was refused. O(1)."""
    capacity, unknown = capacity_of(record)
    ratios = keys.allocation_ratios(state.config)
    schedulable = ratios.schedulable(capacity)
    used = reservations.reserved(state, record.name)
    return {dimension: {
        "capacity": None if dimension in unknown else capacity.get(dimension),
        "allocation_ratio": ratios.get(dimension),
        "schedulable": None if dimension in unknown else schedulable.get(dimension),
        "used": used.get(dimension)} for dimension in DIMENSIONS}


def resize_problem(state: State, member: str, old: Resources, new: Resources) -> str:
    """``""`` when the member can hold an instance grown from ``old`` to ``new`` within
    its schedulable capacity."""
    record = state.members.get(member)
    if record is None:
        return ""
    capacity, unknown = schedulable_of(state, record)
    after = reservations.reserved(state, member) - old + new
    for dimension in ("cpu", "memory", "disk"):
        grows = new.get(dimension) > old.get(dimension)
        if grows and dimension not in unknown and after.get(dimension) > capacity.get(dimension):
            free = capacity.get(dimension) - (after.get(dimension) - new.get(dimension))
            return (f"member {member} has only {format_amount(dimension, max(free, 0))} "
                    f"{dimension} free for {format_amount(dimension, new.get(dimension))}")
    return ""


def growth_problem(state: State, member: str, before: Resources) -> str:
    """``""`` unless the member's reservations grew past its schedulable capacity since
    ``before`` (a member already past it, after a ratio was lowered, may still shrink)."""
    record = state.members.get(member)
    if record is None:
        return ""
    capacity, unknown = schedulable_of(state, record)
    after = reservations.reserved(state, member)
    for dimension in ("cpu", "memory", "disk"):
        if (dimension not in unknown and after.get(dimension) > before.get(dimension)
                and after.get(dimension) > capacity.get(dimension)):
            return (f"member {member} would need {format_amount(dimension, after.get(dimension))}"
                    f" {dimension} of its {format_amount(dimension, capacity.get(dimension))}")
    return ""
