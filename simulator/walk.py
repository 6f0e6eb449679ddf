"""The index's walks: candidates in bound order, stopped by the bound or a limit.

The index keeps members in *shelves*: sorted lists of ``(key, name, member)`` grouped by a
dimension ``d`` and the power-of-two tier of the member's capacity in it, so that on a
shelf ``q_d / c_d`` lies between ``q_d / (largest c_d)`` and ``q_d / (smallest c_d)``.

Spread minimises the load after placement ``f = max_e (r_e + q_e) / c_e``. Each member
has one entry, on its most loaded dimension ``d``, keyed by its load now ``L = r_d / c_d``;
``f >= L + q_d / c_d``, so ``L + q_d / (largest c_d)`` is a lower bound that grows along a
shelf. The walk pops entries merged across shelves by lower bound, least first, and stops
when ``1 - bound`` cannot reach the best total found.

Binpack maximises the same ``f``; see ``walk_binpack`` (one entry per dimension).

Without a limit both walks are exact; with one they stop after ``limit`` feasible
candidates. Each walk inlines the exclude, placement-group and ``@group`` target filters,
the cpu/memory/disk filters, ``scorers.load_after`` and ``scorers.total``: it is the hot
path of placement at 10,000 members. It uses the same expressions, hence the same floats,
as the plain pipeline (the equivalence tests compare them).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import itemgetter

from corral_shared.resources import Resources
from scheduler import scorers
from scheduler.plan import ScoreRecord, TieBreaker
from scheduler.view import MemberView

Entry = tuple[float, str, MemberView]  # (load now, name, member)
Head = tuple[float, int, int, float]  # (heap key, shelf index, position, bound offset)
SLACK = 1e-9  # float headroom on the bounds (they are exact in real numbers only)
PRUNE = 1e-9  # an unrounded bound this far below the (rounded) best cannot round up to it
LAST = "\U0010ffff"  # sorts after every member name


@dataclass(slots=True)
class Shelf:
    """Members sharing their most loaded dimension and its capacity tier."""

    dimension: int  # 0 cpu, 1 memory, 2 disk
    tier: int  # bit length of the capacity in that dimension
    tight: int = -1  # binpack: another dimension nearly full on all these members, or -1
    order: list[Entry] = field(default_factory=list)
    # Smallest and largest capacity per dimension ever on the shelf: stale values only
    # loosen the bounds, never break them.
    min_cap: list[float] = field(default_factory=lambda: [math.inf] * 3)
    max_cap: list[float] = field(default_factory=lambda: [0.0] * 3)
    peak: float = 0.0  # max_cap[dimension]

    def note_capacity(self, capacity: Resources) -> None:
        for i, amount in enumerate((capacity.cpu, capacity.memory, capacity.disk)):
            self.min_cap[i] = min(self.min_cap[i], amount)
            self.max_cap[i] = max(self.max_cap[i], amount)
        self.peak = self.max_cap[self.dimension]


@dataclass(slots=True)
class Best:
    """The running best of a search, and what it scored (for the explanation)."""

    ties: TieBreaker
    name: str | None = None
    total: float = -math.inf
    scored: list[tuple[str, float, float, float]] = field(default_factory=list)
    visited: int = 0

    def offer(self, name: str, resource: float, group: float) -> None:
        """A feasible candidate with its resource and placement-group scores."""
        total = scorers.total(resource, group)
        self.scored.append((name, resource, group, total))
        if total > self.total:
            self.name, self.total = name, total
        elif total == self.total:
            self.tie(name)

    def tie(self, name: str) -> None:
        """``name`` scores as much as the best: the seeded shuffle decides."""
        if self.name is None or self.ties.key(name) < self.ties.key(self.name):
            self.name = name

    def records(self, policy: str, keep: int) -> list[ScoreRecord]:
        """The ``keep`` best scored candidates, best first."""
        top = sorted(self.scored, key=itemgetter(3), reverse=True)[:keep]
        return [ScoreRecord(name, {policy: resource, "placement_group": group}, total)
                for name, resource, group, total in top]

    def tied(self) -> list[str]:
        """Candidates sharing the best total, in tie-break order."""
        return sorted((s[0] for s in self.scored if s[3] == self.total), key=self.ties.key)


@dataclass(slots=True)
class Walk:
    """What one search looks for: the demand, who to skip, the group score, when to stop."""

    demand: Resources
    exclude: frozenset[str]
    group: str  # the cluster group of an @group target, else ""
    avoid: Mapping[str, int] | None  # placement-group holders to skip
    group_score: float
    limit: int | None = None  # feasible candidates to score at most (None: no limit)


def walk_spread(best: Best, shelves: list[Shelf], walk: Walk) -> None:
    """Lowest lower bound of the load after placement first. (The loop is written out
    twice, here and in ``walk_binpack``, because it is the hot path: keep them in step.)"""
    q = (walk.demand.cpu, walk.demand.memory, walk.demand.disk)
    heads: list[Head] = [
        (s.order[0][0] + offset, i, 0, offset)
        for i, s in enumerate(shelves) if s.order
        for offset in (q[s.dimension] / s.peak - SLACK,)]
    heapq.heapify(heads)
    q_cpu, q_memory, q_disk = q
    heapreplace, heappop = heapq.heapreplace, heapq.heappop
    exclude, avoid, group = walk.exclude, walk.avoid, walk.group
    weight, extra = scorers.RESOURCE_WEIGHT, scorers.GROUP_WEIGHT * walk.group_score
    digits, group_score = scorers.DIGITS, walk.group_score
    scored = best.scored
    left = walk.limit or -1  # feasible candidates still to score (-1: no limit)
    floor, visited = best.total - PRUNE - extra, 0
    while heads:
        key, i, pos, offset = heads[0]
        if weight * (1.0 - key) < floor:
            break  # no member left can reach the best total
        order = shelves[i].order
        pos += 1
        if pos < len(order):
            heapreplace(heads, (order[pos][0] + offset, i, pos, offset))
        else:
            heappop(heads)
        _, name, member = order[pos - 1]
        visited += 1
        if name in exclude or (avoid is not None and name in avoid) \
                or (group and group not in member.groups):
            continue
        c, r = member.capacity, member.reserved
        if q_cpu > c.cpu - r.cpu or q_memory > c.memory - r.memory \
                or q_disk > c.disk - r.disk:
            continue
        resource = 1.0 - max((r.cpu + q_cpu) / c.cpu, (r.memory + q_memory) / c.memory,
                             (r.disk + q_disk) / c.disk)
        total = round(weight * resource + extra, digits)
        scored.append((name, resource, group_score, total))
        if total > best.total:
            best.name, best.total = name, total
            floor = total - PRUNE - extra
        elif total == best.total:
            best.tie(name)
        left -= 1
        if not left:
            break
    best.visited += visited


def walk_binpack(best: Best, shelves: list[Shelf], walk: Walk, tight_share: float) -> None:
    """Binpack maximises ``f = max_e f_e`` with ``f_e = F_e + q_e / c_e`` (``F_e``: the
    fraction of dimension ``e`` used now), so the best member is the best of the
    per-dimension bests: here every member has an entry on a shelf of each dimension,
    keyed by ``F_e``. Entries are popped by their upper bound ``F_e + q_e / (smallest c_e
    on the shelf)``, highest first, from the highest ``F_e`` that could still fit
    (``F_e <= 1 - q_e / c_e``); a member is scored on its first entry. A member not seen
    yet has ``f`` at most the highest bound left, so the walk stops when that cannot win.
    Shelves of members with less than ``tight_share`` of another dimension free are
    skipped when the demand in that dimension is at least that share of their largest
    capacity. (The loop mirrors ``walk_spread``'s.)"""
    q = (walk.demand.cpu, walk.demand.memory, walk.demand.disk)
    heads: list[Head] = []  # keys are negated upper bounds: heapq pops the smallest
    for i, shelf in enumerate(shelves):
        e, tight = shelf.dimension, shelf.tight
        if tight >= 0 and q[tight] >= tight_share * shelf.max_cap[tight]:
            continue  # every member here has less than that free in dimension ``tight``
        pos = bisect_right(shelf.order, (1.0 - q[e] / shelf.peak + SLACK, LAST)) - 1
        if pos >= 0:
            offset = q[e] / shelf.min_cap[e] + SLACK
            heads.append((-(shelf.order[pos][0] + offset), i, pos, offset))
    heapq.heapify(heads)
    q_cpu, q_memory, q_disk = q
    heapreplace, heappop = heapq.heapreplace, heapq.heappop
    exclude, avoid, group = walk.exclude, walk.avoid, walk.group
    weight, extra = scorers.RESOURCE_WEIGHT, scorers.GROUP_WEIGHT * walk.group_score
    digits, group_score = scorers.DIGITS, walk.group_score
    scored, seen = best.scored, set()
    left = walk.limit or -1  # feasible candidates still to score (-1: no limit)
    floor, visited = best.total - PRUNE - extra, 0
    while heads:
        key, i, pos, offset = heads[0]
        if weight * -key < floor:
            break  # no member left can reach the best total
        order = shelves[i].order
        if pos > 0:
            heapreplace(heads, (-(order[pos - 1][0] + offset), i, pos - 1, offset))
        else:
            heappop(heads)
        _, name, member = order[pos]
        visited += 1
        if name in seen:
            continue
        seen.add(name)
        if name in exclude or (avoid is not None and name in avoid) \
                or (group and group not in member.groups):
            continue
        c, r = member.capacity, member.reserved
        if q_cpu > c.cpu - r.cpu or q_memory > c.memory - r.memory \
                or q_disk > c.disk - r.disk:
            continue
        resource = max((r.cpu + q_cpu) / c.cpu, (r.memory + q_memory) / c.memory,
                       (r.disk + q_disk) / c.disk)
        total = round(weight * resource + extra, digits)
        scored.append((name, resource, group_score, total))
        if total > best.total:
            best.name, best.total = name, total
            floor = total - PRUNE - extra
        elif total == best.total:
            best.tie(name)
        left -= 1
        if not left:
            break
    best.visited += visited
