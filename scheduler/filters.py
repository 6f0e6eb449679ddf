"""Feasibility filters: may this member take this instance at all?

Each filter is ``(member, request, view) -> reason | None``; the reason completes the
sentence "member m3 ..." (``"is not online (OFFLINE)"``). ``FILTERS`` is the order the
pipeline runs them in: the cheap, structural ones first, so that the stage that empties the
candidate list names the constraint a user can act on; resources last.
"""

from __future__ import annotations

from collections.abc import Callable

from corral_shared.resources import format_amount
from scheduler import keys
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView, MemberView

Filter = Callable[[MemberView, PlacementRequest, ClusterView], "str | None"]


def target(member: MemberView, request: PlacementRequest, view: ClusterView) -> str | None:
    """``--target m1`` keeps only m1; ``--target @g`` keeps the members of cluster group g."""
    group = request.target_group
    if group:
        return None if group in member.groups else f"is not in cluster group {group}"
    if request.target and member.name != request.target:
        return f"is not the target ({request.target})"
    return None


def exclude(member: MemberView, request: PlacementRequest, view: ClusterView) -> str | None:
    """A move or an evacuation must leave its source."""
    return "is excluded (the instance is leaving it)" if member.name in request.exclude else None


def witness(member: MemberView, request: PlacementRequest, view: ClusterView) -> str | None:
    """A witness only votes: it has no storage pool and no bridge, so it takes nothing,
    not even an instance targeted at it by name."""
    return "is a witness: it holds no instances" if member.witness else None


def mode(member: MemberView, request: PlacementRequest, view: ClusterView) -> str | None:
    """LXD's ``scheduler.instance``: ``manual`` members take only instances targeted at them
    by name; ``group`` members also those targeted at one of their cluster groups."""
    if member.mode == "all" or request.target_member == member.name:
        return None
    if member.mode == "manual":
        return "only takes targeted instances (scheduler.instance=manual)"
    if request.target_group in member.groups:
        return None
    return ("only takes instances targeted at it or at its cluster groups "
            "(scheduler.instance=group)")


def online(member: MemberView, request: PlacementRequest, view: ClusterView) -> str | None:
    """Offline and evacuated members take nothing new."""
    return None if member.status == "ONLINE" else f"is not online ({member.status})"


def architecture(member: MemberView, request: PlacementRequest,
                 view: ClusterView) -> str | None:
    """The image's architecture must be the member's (``""`` in the request: any)."""
    if not request.architecture or member.architecture == request.architecture:
        return None
    return f"has architecture {member.architecture}, not {request.architecture}"


def instance_type(member: MemberView, request: PlacementRequest,
                  view: ClusterView) -> str | None:
    """The member's agent must have a driver for the type (containers, virtual machines)."""
    if request.type in member.instance_types:
        return None
    return f"does not run {request.type} instances"


def capacity_known(member: MemberView, request: PlacementRequest,
                   view: ClusterView) -> str | None:
    """A member whose capacity is unknown cannot be checked for room, so takes nothing."""
    if not member.unknown:
        return None
    return (f"has not reported its {'/'.join(member.unknown)} capacity "
            f"(nor set scheduler.capacity.*)")


def placement_group(member: MemberView, request: PlacementRequest,
                    view: ClusterView) -> str | None:
    """Strict placement groups: spread = at most one instance of the group per member;
    compact = all on the members already holding the group (anywhere for the first)."""
    group = view.placement_groups.get(request.placement_group) if request.placement_group \
        else None
    if group is None or group.rigor != "strict":
        return None
    held = group.members.get(member.name, 0)
    if group.policy == "spread" and held:
        return (f"already holds an instance of placement group {group.name} "
                f"(policy=spread, rigor=strict)")
    if group.policy == "compact" and group.members and not held:
        return (f"holds no instance of placement group {group.name} "
                f"(policy=compact, rigor=strict)")
    return None


RATIO_KEYS = {"cpu": keys.CPU_RATIO_KEY, "memory": keys.MEMORY_RATIO_KEY}


def ratio_note(dimension: str, view: ClusterView, schedulable: float | None = None) -> str:
    """How an allocation ratio made the schedulable amount, for a message about free
    room (``""`` at ratio 1, where capacity is what the host has): with ``schedulable``,
    `` (2 CPUs × scheduler.cpu_allocation_ratio 16 = 32 CPUs schedulable)``, else
    `` (scheduler.cpu_allocation_ratio 16)``."""
    ratio = view.ratios.get(dimension)
    if ratio == 1.0 or dimension not in RATIO_KEYS:
        return ""
    if schedulable is None:
        return f" ({RATIO_KEYS[dimension]} {ratio:g})"
    return (f" ({format_amount(dimension, schedulable / ratio)} × {RATIO_KEYS[dimension]} "
            f"{ratio:g} = {format_amount(dimension, schedulable)} schedulable)")


def _resource(dimension: str, noun: str) -> Filter:
    def check(member: MemberView, request: PlacementRequest, view: ClusterView) -> str | None:
        need = request.demand.get(dimension)
        free = member.capacity.get(dimension) - member.reserved.get(dimension)
        if need > free:
            return (f"has {format_amount(dimension, free)} {noun}, "
                    f"needs {format_amount(dimension, need)}"
                    f"{ratio_note(dimension, view, member.capacity.get(dimension))}")
        return None

    check.__name__ = dimension
    check.__doc__ = (f"Free {dimension} (schedulable capacity - reserved) must cover the "
                     f"demand; the capacity already carries the allocation ratio.")
    return check


RESOURCE_NOUNS = {"cpu": "free", "memory": "free memory", "disk": "free disk"}
cpu = _resource("cpu", RESOURCE_NOUNS["cpu"])
memory = _resource("memory", RESOURCE_NOUNS["memory"])
disk = _resource("disk", RESOURCE_NOUNS["disk"])

FILTERS: tuple[tuple[str, Filter], ...] = (
    ("target", target),
    ("exclude", exclude),
    ("witness", witness),
    ("mode", mode),
    ("online", online),
    ("architecture", architecture),
    ("instance_type", instance_type),
    ("capacity_known", capacity_known),
    ("placement_group", placement_group),
    ("cpu", cpu),
    ("memory", memory),
    ("disk", disk),
)

def first_failure(member: MemberView, request: PlacementRequest,
                  view: ClusterView) -> tuple[str, str] | None:
    """``(filter, reason)`` of the first filter that drops ``member``, else None. O(1)."""
    for name, check in FILTERS:
        reason = check(member, request, view)
        if reason is not None:
            return name, reason
    return None
