"""A placement decision and the record of how it was reached.

The explanation is what ``?placement=explain`` and ``corral launch --dry-run`` show: each
stage with the members it dropped and why, the scores of every candidate, the members tied
at the top and the choice. ``explain_json`` is its API form.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from corral_shared.resources import NO_OVERCOMMIT, AllocationRatios, format_amount
from scheduler.request import PlacementRequest


@dataclass(slots=True)
class StageRecord:
    """One filter stage: how many members it looked at, and each one it dropped, why."""

    stage: str
    considered: int
    dropped: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ScoreRecord:
    member: str
    scores: dict[str, float]
    total: float


@dataclass(slots=True)
class Explanation:
    request: PlacementRequest
    policy: str
    stages: list[StageRecord] = field(default_factory=list)
    scored: list[ScoreRecord] = field(default_factory=list)  # best first
    tied: list[str] = field(default_factory=list)  # best total, in tie-break order
    chosen: str | None = None
    indexed: bool = False  # the index's abbreviated record (see scheduler/README.md)
    notes: list[str] = field(default_factory=list)
    # The allocation ratios the members' capacities were scaled by: a user reading "has 0
    # CPUs free" needs to know how many CPUs a core counted for.
    ratios: AllocationRatios = NO_OVERCOMMIT


@dataclass(slots=True)
class Plan:
    """``member`` to place on, or ``error`` ("" on success) naming the binding constraint."""

    member: str | None
    error: str
    explanation: Explanation

    @property
    def ok(self) -> bool:
        return self.member is not None


def tie_key(request_id: str, member: str) -> bytes:
    """Position of ``member`` in the shuffle seeded from ``request_id``: deterministic
    across processes and runs (hashlib, not the salted ``hash()``), independent of which
    other members are candidates, so the plain and the indexed path break ties alike."""
    return hashlib.blake2b(f"{request_id}\x00{member}".encode(), digest_size=8).digest()


class TieBreaker:
    """``tie_key`` for one request, cached, and cheaper per member (the hash of the
    request id's prefix is computed once and copied)."""

    __slots__ = ("_prefix", "_keys")

    def __init__(self, request_id: str) -> None:
        self._prefix = hashlib.blake2b(f"{request_id}\x00".encode(), digest_size=8)
        self._keys: dict[str, bytes] = {}

    def key(self, member: str) -> bytes:
        found = self._keys.get(member)
        if found is None:
            digest = self._prefix.copy()
            digest.update(member.encode())
            found = self._keys[member] = digest.digest()
        return found


def _request_json(request: PlacementRequest) -> dict[str, Any]:
    demand = request.demand
    return {"id": request.id, "name": request.name, "type": request.type,
            "architecture": request.architecture,
            "demand": {"cpu": demand.cpu, "memory": demand.memory, "disk": demand.disk},
            "target": request.target, "placement_group": request.placement_group,
            "exclude": sorted(request.exclude)}


def explain_json(plan: Plan) -> dict[str, Any]:
    """The plan and its explanation as JSON-ready data."""
    ex = plan.explanation
    return {
        "member": plan.member,
        "error": plan.error,
        "request": _request_json(ex.request),
        "policy": ex.policy,
        "allocation_ratios": {"cpu": ex.ratios.cpu, "memory": ex.ratios.memory},
        "indexed": ex.indexed,
        "stages": [{"stage": s.stage, "considered": s.considered,
                    "kept": s.considered - len(s.dropped), "dropped": dict(s.dropped)}
                   for s in ex.stages],
        "scores": [{"member": s.member, "scores": dict(s.scores), "total": s.total}
                   for s in ex.scored],
        "tied": list(ex.tied),
        "chosen": ex.chosen,
        "notes": list(ex.notes),
    }


def explain_text(plan: Plan, limit: int = 10) -> list[str]:
    """Lines for a terminal (``corral launch --dry-run``), at most ``limit`` per list."""
    ex = plan.explanation
    demand = ex.request.demand
    lines = [f"request {ex.request.name}: {ex.request.type}, "
             f"{format_amount('cpu', demand.cpu)}, {format_amount('memory', demand.memory)} "
             f"memory, {format_amount('disk', demand.disk)} disk; policy {ex.policy}; "
             f"allocation ratios cpu {ex.ratios.cpu:g}, memory {ex.ratios.memory:g}"]
    for stage in ex.stages:
        lines.append(f"  {stage.stage}: kept {stage.considered - len(stage.dropped)} "
                     f"of {stage.considered}")
        for member, reason in sorted(stage.dropped.items())[:limit]:
            lines.append(f"    - {member} {reason}")
        if len(stage.dropped) > limit:
            lines.append(f"    ... and {len(stage.dropped) - limit} more")
    for record in ex.scored[:limit]:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in record.scores.items())
        lines.append(f"  score {record.member}: {record.total:.3f} ({parts})")
    lines.extend(f"  note: {note}" for note in ex.notes)
    lines.append(f"placed on {plan.member}" if plan.ok else f"error: {plan.error}")
    return lines
