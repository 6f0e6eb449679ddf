"""The placement pipeline, assembled in one place: ``place(view, request) -> Plan``.

Stages (as Nomad's feasibility stack then rank iterators): request check, feasibility
filters in ``filters.FILTERS`` order, scoring (``scorers``), choice of the best total with
ties broken by a shuffle seeded from the request id. Pure: it reads the view, never writes.
``recheck`` is the plan-apply half (Nomad's ``plan_apply``): the filters again, for one
member, against the state the plan is applied to.
"""

from __future__ import annotations

from scheduler import filters, reasons, scorers
from scheduler.plan import (
    Explanation,
    Plan,
    ScoreRecord,
    StageRecord,
    TieBreaker,
    explain_json,
    explain_text,
)
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView, MemberView

__all__ = ["Plan", "explain_json", "explain_text", "place", "recheck"]


def place(view: ClusterView, request: PlacementRequest) -> Plan:
    """Choose a member for ``request`` on ``view``: O(members), with a full explanation."""
    explanation = Explanation(request=request, policy=view.policy, ratios=view.ratios)
    # 0. the request itself: a named target member and a placement group must exist
    problem = reasons.request_error(view, request)
    if problem:
        return Plan(None, problem, explanation)
    # 1. feasibility: each filter drops the members it rules out, with the reason
    candidates, problem = _feasible(view, request, explanation)
    if problem:
        return Plan(None, problem, explanation)
    # 2. scoring: resource policy (spread | binpack) plus the placement-group preference
    explanation.scored = sorted((_scored(m, request, view) for m in candidates),
                                key=lambda r: (-r.total, r.member))
    # 3. choice: the best total; ties go to the shuffle seeded from the request id
    best = explanation.scored[0].total
    explanation.tied = sorted((r.member for r in explanation.scored if r.total == best),
                              key=TieBreaker(request.id).key)
    explanation.chosen = explanation.tied[0]
    return Plan(explanation.chosen, "", explanation)


def _feasible(view: ClusterView, request: PlacementRequest,
              explanation: Explanation) -> tuple[list[MemberView], str]:
    """Run the filters stage by stage; the stage that empties the list is the error."""
    candidates = list(view.members.values())
    for stage, check in filters.FILTERS:
        record = StageRecord(stage, len(candidates))
        kept: list[MemberView] = []
        for member in candidates:
            reason = check(member, request, view)
            if reason is None:
                kept.append(member)
            else:
                record.dropped[member.name] = reason
        explanation.stages.append(record)
        if not kept:
            return [], reasons.summary(stage, request, view, candidates, record.dropped)
        candidates = kept
    return candidates, ""


def _scored(member: MemberView, request: PlacementRequest, view: ClusterView) -> ScoreRecord:
    parts, total = scorers.scores(member, request, view)
    return ScoreRecord(member.name, parts, total)


def recheck(view: ClusterView, request: PlacementRequest, member: str) -> str:
    """Re-validate a plan: ``""`` if ``member`` may still take ``request`` on ``view``, else
    why not. Runs the request check and the filters for that one member only: O(1) in the
    number of members and instances, as the Raft apply needs."""
    found = view.members.get(member)
    if found is None:
        return f"cluster member {member!r} not found"
    problem = reasons.request_error(view, request)
    if problem:
        return problem
    failure = filters.first_failure(found, request, view)
    return f"member {member} {failure[1]}" if failure else ""
