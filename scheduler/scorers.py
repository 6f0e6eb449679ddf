"""Scorers: among the members that may take the instance, which should?

Every score is in [0, 1], higher is better. The total is
``RESOURCE_WEIGHT * resource + GROUP_WEIGHT * placement_group``, rounded to 9 decimals so
that float noise does not break ties (ties go to the seeded shuffle, see ``pipeline``).
``GROUP_WEIGHT`` exceeds the whole range of the resource score, so a permissive placement
group's preference always wins when it can be met, and resources decide the rest.

Load fraction of a member after placement: ``max`` over cpu, memory and disk of
``(reserved + demand) / capacity``; the most committed dimension is the one that runs out.
"""

from __future__ import annotations

from collections.abc import Callable

from corral_shared.resources import Resources
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView, MemberView

Scorer = Callable[[MemberView, PlacementRequest, ClusterView], float]

RESOURCE_WEIGHT = 1.0
GROUP_WEIGHT = 2.0
DIGITS = 9


def _fraction(used: float, capacity: float) -> float:
    return used / capacity if capacity > 0 else float("inf")


def load_after(member: MemberView, demand: Resources) -> float:
    """Load fraction of ``member`` once ``demand`` is added (1.0 = a dimension is full)."""
    c, r = member.capacity, member.reserved
    if c.cpu > 0 and c.memory > 0 and c.disk > 0:  # the common case, without calls
        return max((r.cpu + demand.cpu) / c.cpu, (r.memory + demand.memory) / c.memory,
                   (r.disk + demand.disk) / c.disk)
    return max(_fraction(r.cpu + demand.cpu, c.cpu),
               _fraction(r.memory + demand.memory, c.memory),
               _fraction(r.disk + demand.disk, c.disk))


def load_now(member: MemberView) -> float:
    """Load fraction of ``member`` as it is; never more than ``load_after`` (the index's
    lower bound for spread)."""
    c, r = member.capacity, member.reserved
    return max(_fraction(r.cpu, c.cpu), _fraction(r.memory, c.memory),
               _fraction(r.disk, c.disk))


def spread(member: MemberView, request: PlacementRequest, view: ClusterView) -> float:
    """The default policy: the least loaded member after placement scores highest."""
    return 1.0 - load_after(member, request.demand)


def binpack(member: MemberView, request: PlacementRequest, view: ClusterView) -> float:
    """``cluster.scheduler.policy=binpack``: the fullest member that still fits scores
    highest, leaving whole members free for large instances."""
    return load_after(member, request.demand)


RESOURCE_SCORERS: dict[str, Scorer] = {"spread": spread, "binpack": binpack}


def placement_group(member: MemberView, request: PlacementRequest,
                    view: ClusterView) -> float:
    """Permissive placement groups as a preference: spread = 1 on a member holding none of
    the group's instances; compact = 1 on a member holding some. Otherwise 0 (strict groups
    are enforced by the filter and score 0 everywhere)."""
    group = view.placement_groups.get(request.placement_group) if request.placement_group \
        else None
    if group is None or group.rigor != "permissive":
        return 0.0
    held = group.members.get(member.name, 0) > 0
    if group.policy == "spread":
        return 0.0 if held else 1.0
    return 1.0 if held and group.policy == "compact" else 0.0


def total(resource: float, group: float) -> float:
    """The weighted sum that ranks candidates (the index uses the same function)."""
    return round(RESOURCE_WEIGHT * resource + GROUP_WEIGHT * group, DIGITS)


def scores(member: MemberView, request: PlacementRequest,
           view: ClusterView) -> tuple[dict[str, float], float]:
    """``({scorer: score}, total)`` for one feasible member."""
    resource = RESOURCE_SCORERS[view.policy](member, request, view)
    group = placement_group(member, request, view)
    return {view.policy: resource, "placement_group": group}, total(resource, group)
