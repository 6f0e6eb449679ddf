"""The State -> :class:`~scheduler.view.ClusterView` adapter: what placement sees of the
replicated state.

It lives beside the state, not in ``scheduler/``, because the scheduler is a leaf that
imports nothing of ``cluster`` (the import contracts in pyproject check this): the state
knows the scheduler's view types, the scheduler never knows the State.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cluster.state import reservations
from cluster.state.apply_members import is_witness, member_status
from cluster.state.model import Instance, Member, State
from corral_shared.resources import DIMENSIONS, ZERO, AllocationRatios, Resources
from scheduler import keys
from scheduler.view import ClusterView, MemberView, PlacementGroupView


def _holders(inst: Instance) -> tuple[str, ...]:
    """Members an instance occupies: its location and, during a move, its target."""
    return (inst.location, inst.moving_to) if inst.moving_to else (inst.location,)


def instances_by_member(state: State) -> dict[str, int]:
    counts: dict[str, int] = {}
    for inst in state.instances.values():
        for member in _holders(inst):
            counts[member] = counts.get(member, 0) + 1
    return counts


def placement_groups_from_state(state: State, only: str = "") -> dict[str, PlacementGroupView]:
    """Placement groups defined in the cluster config or named by an instance (whose
    profiles may set ``placement.group``), with their per-member instance counts (from
    the state's running totals: O(groups), or O(1) with ``only`` one group)."""
    groups: dict[str, PlacementGroupView] = {}
    for key, value in state.config.items():
        parts = keys.split_group_key(key)
        if parts is None or (only and parts[0] != only):
            continue
        group = groups.setdefault(parts[0], PlacementGroupView(parts[0]))
        allowed = keys.GROUP_POLICIES if parts[1] == "policy" else keys.GROUP_RIGORS
        if value in allowed:
            setattr(group, parts[1], value)
    reservations.totals(state)
    assert state.grouped is not None
    for name in [only] if only else list(state.grouped):
        counts = state.grouped.get(name)
        if counts:
            groups.setdefault(name, PlacementGroupView(name)).members.update(counts)
    return groups


def capacity_of(member: Member) -> tuple[Resources, tuple[str, ...]]:
    """Reported capacity with ``scheduler.capacity.*`` on top, and the dimensions unknown."""
    amounts: dict[str, float] = {}
    for dimension in DIMENSIONS:
        reported = float(member.capacity.get(dimension, 0) or 0)
        override = member.config.get(keys.CAPACITY_PREFIX + dimension, "")
        if override:
            value = keys.capacity_override(keys.CAPACITY_PREFIX + dimension, override,
                                           float(member.capacity.get("memory", 0) or 0))
            reported = value if value is not None else reported
        amounts[dimension] = reported if reported > 0 else 0.0
    unknown = tuple(d for d in DIMENSIONS if amounts[d] <= 0)
    return Resources(amounts["cpu"], int(amounts["memory"]), int(amounts["disk"])), unknown


def member_view(member: Member, status: str, reserved: Resources, instances: int, *,
                ratios: AllocationRatios) -> MemberView:
    """``member`` as placement sees it, its capacity scaled by the cluster's ``ratios``
    (required: forgetting them would silently place as if nothing were overcommitted)."""
    mode = member.config.get(keys.MODE_KEY, "all")
    capacity, unknown = capacity_of(member)
    return MemberView(
        name=member.name, status=status, architecture=member.architecture,
        instance_types=frozenset(member.instance_types),
        mode=mode if mode in keys.MODES else "all", groups=frozenset(member.groups),
        capacity=ratios.schedulable(capacity), reserved=reserved, instances=instances,
        unknown=unknown, witness=is_witness(member))


def view_from_state(state: State, *,
                    reserved: Mapping[str, Resources] | None = None,
                    instances: Mapping[str, int] | None = None,
                    members: Iterable[str] | None = None,
                    placement_groups: Mapping[str, PlacementGroupView] | None = None,
                    ) -> ClusterView:
    """The view of ``state``; member status is the liveness the Raft leader committed.

    Anything precomputed may be passed in: ``reserved`` per member (else the state's
    running totals), ``instances`` per member (else counted), ``placement_groups`` (else
    computed), and ``members`` to restrict the view to a few members. With ``instances``,
    ``placement_groups`` and ``members``, building costs O(len(members)). Placement
    groups given are used as they are, not copied (``commit`` updates them). Members'
    capacities are scaled by the allocation ratios of the cluster config
    (``keys.allocation_ratios``), which the view keeps in ``ratios``. Never raises.
    """
    reserved = reserved if reserved is not None else reservations.totals(state)
    counts = instances if instances is not None else instances_by_member(state)
    names = state.members if members is None else [n for n in members if n in state.members]
    policy = state.config.get(keys.POLICY_KEY, "")
    ratios = keys.allocation_ratios(state.config)
    return ClusterView(
        members={name: member_view(state.members[name],
                                   member_status(state.members[name]),
                                   reserved.get(name, ZERO), counts.get(name, 0),
                                   ratios=ratios)
                 for name in names},
        policy=policy if policy in keys.POLICIES else "spread",
        placement_groups=dict(placement_groups) if placement_groups is not None
        else placement_groups_from_state(state),
        ratios=ratios,
    )
