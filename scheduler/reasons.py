"""Error messages: the binding constraint, said the way a user can act on it.

The binding constraint is the filter stage that dropped the last candidates. One member
left: its own reason ("member m3 is not online (OFFLINE)"). Several: what none of them had
("no member has 4 GiB free memory; largest free: m2 with 3.1 GiB").
"""

from __future__ import annotations

from collections.abc import Sequence

from corral_shared.resources import format_amount
from scheduler import keys
from scheduler.filters import RESOURCE_NOUNS, ratio_note
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView, MemberView


def request_error(view: ClusterView, request: PlacementRequest) -> str:
    """Problems with the request itself, before any member is looked at (O(1))."""
    if request.target_member and request.target_member not in view.members:
        return f"cluster member {request.target_member!r} not found"
    if request.target.startswith("@") and not request.target_group:
        return "a cluster group target needs a name after '@'"
    if request.placement_group:
        group = view.placement_groups.get(request.placement_group)
        if group is None or group.policy not in keys.GROUP_POLICIES:
            return (f"placement group {request.placement_group!r} not found (define it with "
                    f"{keys.group_key(request.placement_group, 'policy')}=spread|compact)")
    if not view.members:
        return "the cluster has no members"
    return ""


def _largest_free(dimension: str, members: Sequence[MemberView]) -> str:
    best = max(members, key=lambda m: (m.capacity.get(dimension) - m.reserved.get(dimension),
                                       m.name))
    free = best.capacity.get(dimension) - best.reserved.get(dimension)
    return f"{best.name} with {format_amount(dimension, free)}"


def summary(stage: str, request: PlacementRequest, view: ClusterView,
            considered: Sequence[MemberView], dropped: dict[str, str]) -> str:
    """Why nothing is left after ``stage``, which dropped all of ``considered``."""
    if len(considered) == 1:
        member = considered[0].name
        return f"member {member} {dropped[member]}"
    if stage in RESOURCE_NOUNS:
        need = format_amount(stage, request.demand.get(stage))
        return (f"no member has {need} {RESOURCE_NOUNS[stage]}; "
                f"largest free: {_largest_free(stage, considered)}{ratio_note(stage, view)}")
    if stage == "placement_group":
        return (f"placement group {request.placement_group} leaves no member: "
                f"{_group_rule(view, request.placement_group)}")
    messages = {
        "target": f"no cluster member is in group {request.target_group}",
        "exclude": f"no member is left once {', '.join(sorted(request.exclude))} "
                   f"{'is' if len(request.exclude) == 1 else 'are'} excluded",
        "witness": "only witnesses are left, and a witness holds no instances",
        "mode": "no member takes untargeted instances (scheduler.instance is manual or group "
                "on all of them)",
        "online": "no online member",
        "architecture": f"no online member has architecture {request.architecture}",
        "instance_type": f"no online member runs {request.type} instances",
        "capacity_known": "no online member has reported its capacity",
    }
    return messages.get(stage, f"no member passes {stage}")


def _group_rule(view: ClusterView, name: str) -> str:
    group = view.placement_groups[name]
    if group.policy == "spread":
        return "every eligible member already holds one of its instances (policy=spread, " \
               "rigor=strict)"
    holders = ", ".join(sorted(group.members)) or "none"
    return f"its instances are on {holders}, none of them eligible (policy=compact, " \
           f"rigor=strict)"
