"""Test support: builders for views and requests, and a plan-apply harness.

As Nomad's ``scheduler/testing.go``: the :class:`Harness` plays the Raft apply. It holds the
authoritative view, re-validates every submitted plan with ``recheck``, commits the ones
that pass and rejects the others, records everything, and can be told to reject plans to
exercise a caller's retry path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral_shared.resources import GiB, Resources
from scheduler.pipeline import place, recheck
from scheduler.plan import Plan
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView, MemberView, PlacementGroupView


def member(name: str, cpu: float = 8, memory: int = 16 * GiB, disk: int = 100 * GiB,
           reserved: Resources | None = None, **attributes: object) -> MemberView:
    """An online x86_64 container member with the given capacity (and attributes)."""
    built = MemberView(name=name, capacity=Resources(cpu, memory, disk),
                       reserved=reserved or Resources())
    for key, value in attributes.items():
        setattr(built, key, value)
    return built


def view(*members: MemberView, policy: str = "spread",
         groups: dict[str, PlacementGroupView] | None = None) -> ClusterView:
    return ClusterView({m.name: m for m in members}, policy, dict(groups or {}))


def request(id: str = "r1", cpu: float = 1, memory: int = 1 * GiB, disk: int = 1 * GiB,
            **fields: object) -> PlacementRequest:
    """A container request for x86_64 with the given demand (and fields)."""
    values: dict[str, object] = {"name": f"i-{id}", "type": "container",
                                 "architecture": "x86_64", **fields}
    return PlacementRequest(id=id, demand=Resources(cpu, memory, disk),
                            **values)  # type: ignore[arg-type]


Planner = Callable[[ClusterView, PlacementRequest], Plan]


@dataclass
class Harness:
    """The authoritative view and the apply step of a plan."""

    view: ClusterView
    applied: list[tuple[PlacementRequest, str]] = field(default_factory=list)
    rejected: list[tuple[PlacementRequest, str, str]] = field(default_factory=list)
    force_rejections: int = 0  # reject this many of the next plans, whatever they say

    def apply(self, request: PlacementRequest, plan: Plan) -> str:
        """Re-validate and commit ``plan``; returns ``""`` or why it was rejected."""
        if plan.member is None:
            return plan.error
        error = recheck(self.view, request, plan.member)
        if not error and self.force_rejections:
            self.force_rejections -= 1
            error = "rejected by the harness"
        if error:
            self.rejected.append((request, plan.member, error))
            return error
        self.view.commit(plan.member, request.demand, request.placement_group)
        self.applied.append((request, plan.member))
        return ""

    def place(self, request: PlacementRequest, planner: Planner = place,
              attempts: int = 5) -> str:
        """Plan on a fresh copy of the current view and apply, retrying on rejection.
        Returns the member placed on, or ``""``."""
        for _ in range(attempts):
            plan = planner(self.view.copy(), request)
            if plan.member is None:
                return ""
            if not self.apply(request, plan):
                return plan.member
        return ""

    def overcommitted(self) -> list[str]:
        """Members whose reservations exceed their capacity in some dimension."""
        return [m.name for m in self.view.members.values()
                if not m.reserved.fits_in(m.capacity)]
