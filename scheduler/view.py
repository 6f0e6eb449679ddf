"""The scheduler's snapshot of the cluster: what placement needs to know, nothing more.

A :class:`ClusterView` is built from the replicated ``State`` by
``cluster.state.cluster_view.view_from_state`` (the scheduler is a leaf: it never reads the
State itself) and is the only input of placement besides the request. It is a private
working copy: ``commit``/``release`` update it as plans are accepted, never the State.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from corral_shared.resources import NO_OVERCOMMIT, ZERO, AllocationRatios, Resources
from scheduler import keys


@dataclass(slots=True)
class MemberView:
    """One member as placement sees it.

    ``capacity`` is what placement may reserve: the member's own capacity times the
    cluster's allocation ratios (``ClusterView.ratios``), so every filter and scorer
    compares reservations with it directly. ``unknown`` lists the capacity dimensions
    neither reported by the agent nor set with ``scheduler.capacity.*``: such a member
    takes no instance until it reports them. A ``witness`` votes in the cluster's quorum
    and takes no instance at all.
    """

    name: str
    status: str = "ONLINE"  # ONLINE | OFFLINE | EVACUATED
    architecture: str = "x86_64"
    instance_types: frozenset[str] = frozenset({"container"})
    mode: str = "all"  # scheduler.instance: all | manual | group
    groups: frozenset[str] = frozenset()
    capacity: Resources = ZERO
    reserved: Resources = ZERO
    instances: int = 0
    unknown: tuple[str, ...] = ()
    witness: bool = False

    @property
    def free(self) -> Resources:
        return self.capacity - self.reserved


@dataclass(slots=True)
class PlacementGroupView:
    """A placement group: its rules, and how many of its instances each member holds.

    ``policy == ""`` means the group is used by instances but not defined in the config.
    """

    name: str
    policy: str = ""  # spread | compact
    rigor: str = keys.DEFAULT_GROUP_RIGOR  # strict | permissive
    members: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ClusterView:
    """What placement reads. ``ratios`` are the allocation ratios already applied to the
    members' capacities; they are kept to explain a placement (a view built by hand has
    none: its capacities are what may be reserved)."""

    members: dict[str, MemberView] = field(default_factory=dict)
    policy: str = "spread"  # cluster.scheduler.policy: spread | binpack
    placement_groups: dict[str, PlacementGroupView] = field(default_factory=dict)
    ratios: AllocationRatios = NO_OVERCOMMIT

    def commit(self, member: str, demand: Resources, placement_group: str = "") -> None:
        """Count an accepted placement on ``member`` (mutates this view)."""
        target = self.members[member]
        target.reserved = target.reserved + demand
        target.instances += 1
        if placement_group:
            group = self.placement_groups.setdefault(
                placement_group, PlacementGroupView(placement_group))
            group.members[member] = group.members.get(member, 0) + 1

    def release(self, member: str, demand: Resources, placement_group: str = "") -> None:
        """Undo :meth:`commit`: the instance left ``member`` (mutates this view)."""
        target = self.members[member]
        target.reserved = target.reserved - demand
        target.instances = max(0, target.instances - 1)
        group = self.placement_groups.get(placement_group) if placement_group else None
        if group is not None and member in group.members:
            group.members[member] -= 1
            if group.members[member] <= 0:
                del group.members[member]

    def copy(self) -> ClusterView:
        """An independent copy (for a scheduler that must not see another's commits)."""
        return copy.deepcopy(self)
