"""An incremental index that keeps placement fast at 10,000 members.

Two structures, updated by ``commit``/``release``/``update_member``:

* *classes*: the members a search may return (online, capacity known, not in manual
  mode, not a witness) by architecture, instance types and mode. The architecture,
  instance type and mode filters run once per class and request shape, not once per member.
* *shelves* (``simulator.walk``): per class, members sorted by a load fraction and grouped
  by dimension and capacity tier, which bounds each member's load after placement from
  below (spread) or above (binpack). Re-keying a member is a bisect and a list insert.

A search walks the shelves merged in bound order and stops when the bound shows that no
member left can reach the best total found (branch and bound) or, like Nomad's stack,
which scores about log2(n) candidates, after ``limit`` feasible candidates. Up to
``EXACT_BELOW`` members there is no limit, so the choice is the plain pipeline's (or one of
equal score); above, it is the best of the first ``limit`` feasible members in bound order
unless the bound closed first (``bench/placement.py`` measures how close that comes;
``exact=True`` lifts the limit).

Placement-group preferences search the group's holders separately (they are few); a name
target evaluates one member. When nothing is found, the plain pipeline runs to produce the
full explanation and the exact error (O(n), on failures only). An indexed plan's
explanation is abbreviated: the best scored candidates and a note, no filter stages.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from corral_shared.resources import Resources
from scheduler import filters, pipeline, reasons, scorers
from scheduler.plan import Explanation, Plan, TieBreaker
from scheduler.request import PlacementRequest
from scheduler.view import ClusterView, MemberView
from simulator.walk import Best, Entry, Shelf, Walk, walk_binpack, walk_spread

EXACT_BELOW = 64
TIGHT = 1 / 16  # binpack: a dimension with less than this fraction free is "full"
KEEP_SCORES = 3  # scored candidates listed in an indexed plan's explanation
# Filters run once per class (on a member of it): they read only the class key, given that
# shelved members are online, of known capacity, not in manual mode and not witnesses.
CLASS_FILTERS = frozenset({"mode", "architecture", "instance_type"})

ClassKey = tuple[str, frozenset[str], str, frozenset[str]]
Shape = tuple[str, str, str]  # (type, architecture, target group) of a request


def candidate_limit(members: int) -> int | None:
    """Feasible candidates a search scores: as many as the bound needs up to
    ``EXACT_BELOW`` members, then ``max(8, ceil(log2 n))`` (Nomad scores about log2(n))."""
    if members <= EXACT_BELOW:
        return None
    return max(8, math.ceil(math.log2(members)))


def _searchable(member: MemberView) -> bool:
    """Only online members of known capacity that take untargeted or group-targeted
    instances (so no witness) can come out of a search; the others are never shelved, so
    that a walk never steps over them (spread would leave them least loaded, first in
    every walk)."""
    c = member.capacity
    return (member.status == "ONLINE" and member.mode in ("all", "group")
            and not member.witness and not member.unknown
            and c.cpu > 0 and c.memory > 0 and c.disk > 0)


def _class_key(member: MemberView) -> ClassKey:
    """The static attributes the class-level filters read. Cluster groups count only for
    ``group``-mode members; an ``@group`` target is checked per member in the walk."""
    groups = member.groups if member.mode == "group" else frozenset()
    return (member.architecture, member.instance_types, member.mode, groups)


def _shelf_keys(member: MemberView, policy: str) -> list[tuple[float, int, int, int]]:
    """``(key, dimension, capacity tier in it, tight dimension)`` of each shelf entry.

    Spread: one entry, on the most loaded dimension, keyed by the load now. Binpack: one
    entry per dimension, keyed by the fraction used in it (binpack maximises a maximum, so
    the best member is the best of the per-dimension bests), and set apart by the other
    dimension with less than ``TIGHT`` of it free, if any: binpack fills members up, and a
    walk must not step over every member full in another dimension.
    """
    c, r = member.capacity, member.reserved
    fractions = (r.cpu / c.cpu, r.memory / c.memory, r.disk / c.disk)
    tiers = (int(c.cpu).bit_length(), int(c.memory).bit_length(), int(c.disk).bit_length())
    if policy == "binpack":
        keys = []
        for d in range(3):
            fullest = max((e for e in range(3) if e != d), key=fractions.__getitem__)
            tight = fullest if fractions[fullest] > 1.0 - TIGHT else -1
            keys.append((fractions[d], d, tiers[d], tight))
        return keys
    load = max(fractions)
    dimension = fractions.index(load)
    return [(load, dimension, tiers[dimension], -1)]


@dataclass(slots=True)
class _Class:
    rep: MemberView  # any member: the class-level filters only read the key's attributes
    shelves: dict[tuple[int, int, int], Shelf] = field(default_factory=dict)


class IndexedScheduler:
    """Placement over an index of ``view``, which it owns and keeps up to date.

    Call ``commit``/``release`` for every placement accepted and every instance gone (not
    ``view.commit`` directly), ``update_member`` when a member's status, config or capacity
    changes; ``recheck(scheduler.view, ...)`` then re-validates against the same numbers.
    """

    def __init__(self, view: ClusterView, *, limit: int | None = None,
                 exact: bool = False) -> None:
        self.view = view
        self._fixed_limit = limit
        self._exact = exact
        self._rebuild()

    def _rebuild(self) -> None:
        """Shelve every member for the view's policy (shelves differ by policy)."""
        self._policy = self.view.policy
        self._classes: dict[ClassKey, _Class] = {}
        self._compatible: dict[Shape, list[Shelf]] = {}
        self._where: dict[str, list[tuple[Shelf, Entry]]] = {}  # shelved members
        for member in self.view.members.values():
            self._shelve(member)

    @property
    def limit(self) -> int | None:
        """Feasible candidates a search scores at most (None: as many as the bound needs)."""
        if self._exact:
            return None
        if self._fixed_limit is not None:
            return self._fixed_limit
        return candidate_limit(len(self.view.members))

    # -- keeping the index in step -------------------------------------------------------

    def commit(self, member: str, demand: Resources, placement_group: str = "") -> None:
        """An accepted placement: count it in the view and re-key the member."""
        self.view.commit(member, demand, placement_group)
        self._reshelve(member)

    def release(self, member: str, demand: Resources, placement_group: str = "") -> None:
        """An instance left ``member`` (deleted, moved away)."""
        self.view.release(member, demand, placement_group)
        self._reshelve(member)

    def update_member(self, member: MemberView) -> None:
        """Add or replace a member (its status, mode, groups or capacity changed)."""
        self._unshelve(member.name)
        self.view.members[member.name] = member
        self._shelve(member)

    def remove_member(self, name: str) -> None:
        self._unshelve(name)
        del self.view.members[name]

    def _reshelve(self, name: str) -> None:
        member = self.view.members[name]
        found = self._where.get(name)
        if found is None or len(found) != 1 or not _searchable(member):
            self._unshelve(name)
            self._shelve(member)
            return
        # Spread, the common case: the member usually stays on its shelf.
        shelf, entry = found[0]
        (load, dimension, tier, _), = _shelf_keys(member, self._policy)
        shelf.order.pop(bisect_left(shelf.order, entry[:2]))
        if dimension != shelf.dimension or tier != shelf.tier:
            del self._where[name]
            self._shelve(member)
            return
        entry = (load, name, member)
        insort(shelf.order, entry)
        found[0] = (shelf, entry)

    def _unshelve(self, name: str) -> None:
        for shelf, entry in self._where.pop(name, ()):
            shelf.order.pop(bisect_left(shelf.order, entry[:2]))

    def _shelve(self, member: MemberView) -> None:
        if not _searchable(member):
            return
        key = _class_key(member)
        cls = self._classes.get(key)
        if cls is None:
            # A copy: a caller may later change this member in place and re-add it.
            cls = self._classes[key] = _Class(replace(member))
            self._compatible.clear()
        placed = self._where[member.name] = []
        for load, dimension, tier, tight in _shelf_keys(member, self._policy):
            shelf = cls.shelves.get((dimension, tier, tight))
            if shelf is None:
                shelf = cls.shelves[(dimension, tier, tight)] = Shelf(dimension, tier, tight)
                self._compatible.clear()
            shelf.note_capacity(member.capacity)
            entry = (load, member.name, member)
            insort(shelf.order, entry)
            placed.append((shelf, entry))

    def _shelves_for(self, request: PlacementRequest) -> list[Shelf]:
        """Shelves of the classes that pass the class-level filters (cached per shape)."""
        shape = (request.type, request.architecture, request.target_group)
        shelves = self._compatible.get(shape)
        if shelves is None:
            shelves = [s for c in self._classes.values() if all(
                check(c.rep, request, self.view) is None
                for name, check in filters.FILTERS if name in CLASS_FILTERS)
                for s in c.shelves.values()]
            self._compatible[shape] = shelves
        return shelves

    # -- placement -----------------------------------------------------------------------

    def place(self, request: PlacementRequest) -> Plan:
        """Choose a member for ``request`` (see the module docstring for how well)."""
        view = self.view
        if view.policy != self._policy:
            self._rebuild()  # the cluster policy changed: O(n), once
        if reasons.request_error(view, request):
            return pipeline.place(view, request)  # fails at stage 0, O(1)
        best = Best(TieBreaker(request.id))
        if request.target_member:
            self._offer_each(best, [request.target_member], request, group_score=None)
            note = "targeted member scored alone"
        else:
            note = self._search_groups(best, request)
        if best.name is None:
            if request.target_member:  # the plain pipeline would scan everyone to say this
                failure = filters.first_failure(view.members[request.target_member],
                                                request, view)
                reason = failure[1] if failure else "cannot take it"
                return Plan(None, f"member {request.target_member} {reason}",
                            Explanation(request, view.policy, indexed=True, notes=[note],
                                        ratios=view.ratios))
            plan = pipeline.place(view, request)
            plan.explanation.notes.append("the index found no candidate; this explanation "
                                          "is the full pipeline's")
            return plan
        explanation = Explanation(request, view.policy, scored=best.records(view.policy,
                                                                            KEEP_SCORES),
                                  tied=best.tied(), chosen=best.name, indexed=True,
                                  notes=[note], ratios=view.ratios)
        return Plan(best.name, "", explanation)

    def _search_groups(self, best: Best, request: PlacementRequest) -> str:
        """Apply the placement group's rule around the shelf search; returns a note."""
        group = self.view.placement_groups.get(request.placement_group) \
            if request.placement_group else None
        if group is None:
            return self._search(best, request, avoid=None, group_score=0.0)
        holders = group.members
        if group.rigor == "strict" and group.policy == "compact" and holders:
            self._offer_each(best, list(holders), request, group_score=0.0)
            return f"compact placement group: scored its {len(holders)} member(s)"
        if group.rigor == "strict":  # spread, or compact with no instance yet
            return self._search(best, request, avoid=holders, group_score=0.0)
        if group.policy == "compact":  # permissive: a holder if one fits, else anyone
            self._offer_each(best, list(holders), request, group_score=1.0)
            if best.name is not None:
                return f"compact placement group: chose among its {len(holders)} member(s)"
            return self._search(best, request, avoid=holders, group_score=0.0)
        # Permissive spread: a member without the group scores 2 more than one with it,
        # more than the whole resource range, so holders matter only if no other fits.
        note = self._search(best, request, avoid=holders, group_score=1.0)
        if best.name is None:
            self._offer_each(best, list(holders), request, group_score=0.0)
            note += "; fell back to members already holding the placement group"
        return note

    def _offer_each(self, best: Best, names: Iterable[str], request: PlacementRequest,
                    group_score: float | None) -> None:
        """Score a short list of members, each through every filter."""
        view = self.view
        resource_score = scorers.RESOURCE_SCORERS[view.policy]
        for name in names:
            member = view.members.get(name)
            if member is None or filters.first_failure(member, request, view) is not None:
                continue
            group = scorers.placement_group(member, request, view) if group_score is None \
                else group_score
            best.offer(name, resource_score(member, request, view), group)

    def _search(self, best: Best, request: PlacementRequest, avoid: Mapping[str, int] | None,
                group_score: float) -> str:
        """Walk the compatible shelves in bound order with the bound and the limit."""
        shelves = self._shelves_for(request)
        walk = Walk(request.demand, request.exclude, request.target_group, avoid, group_score,
                    self.limit)
        before = best.visited
        if self.view.policy == "binpack":
            walk_binpack(best, shelves, walk, TIGHT)
        else:
            walk_spread(best, shelves, walk)
        return (f"index: {len(shelves)} shelves, visited {best.visited - before} member(s), "
                f"scored {len(best.scored)}")
