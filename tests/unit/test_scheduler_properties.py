"""Properties of placement over random clusters (hypothesis).

The oracle below restates the placement rules independently of ``scheduler.filters``, so a
filter that drifts from the rules shows up here. Capacities and demands are small integers
so that exact fits and ties are common.
"""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral_shared.resources import MiB, Resources
from scheduler import scorers
from scheduler.pipeline import place, recheck
from scheduler.plan import TieBreaker
from scheduler.request import PlacementRequest
from scheduler.testing import Harness
from scheduler.view import ClusterView, MemberView, PlacementGroupView

GROUPS = ("g1", "g2")
PLACEMENT_GROUPS = {"sp-strict": ("spread", "strict"), "sp-perm": ("spread", "permissive"),
                    "co-strict": ("compact", "strict"), "co-perm": ("compact", "permissive")}
TYPES = ("container", "virtual-machine")
ARCHES = ("x86_64", "aarch64")
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def random_member(rnd: random.Random, name: str, varied: bool = True) -> MemberView:
    cpu, memory, disk = rnd.randint(1, 16), rnd.randint(1, 64) * 256 * MiB, \
        rnd.randint(1, 100) * 1024 * MiB
    share = rnd.choice((0.0, 0.5, 0.5, 1.0))  # empty, half full at most, or up to full
    reserved = Resources(rnd.randint(0, int(cpu * share)),
                         rnd.randint(0, int(memory * share) // MiB) * MiB,
                         rnd.randint(0, int(disk * share) // MiB) * MiB)

    def pick(common: object, *rare: object) -> object:
        return rnd.choice((common,) * 8 + rare) if varied else common

    return MemberView(
        name=name, status=pick("ONLINE", "OFFLINE", "EVACUATED"),  # type: ignore[arg-type]
        architecture=pick("x86_64", "aarch64"),  # type: ignore[arg-type]
        instance_types=pick(frozenset(TYPES), frozenset({"container"}),  # type: ignore[arg-type]
                            frozenset({"virtual-machine"})),
        mode=pick("all", "manual", "group"),  # type: ignore[arg-type]
        groups=frozenset(g for g in GROUPS if varied and rnd.random() < 0.4),
        capacity=Resources(cpu, memory, disk), reserved=reserved,
        unknown=pick((), ("disk",)),  # type: ignore[arg-type]
        witness=pick(False, True))  # type: ignore[arg-type]


def random_cluster(rnd: random.Random, count: int, varied: bool = True) -> ClusterView:
    members = {f"m{i}": random_member(rnd, f"m{i}", varied) for i in range(count)}
    names = sorted(members)
    groups = {name: PlacementGroupView(name, policy, rigor, {
        rnd.choice(names): rnd.randint(1, 2) for _ in range(rnd.randint(0, 3))})
        for name, (policy, rigor) in PLACEMENT_GROUPS.items()}
    return ClusterView(members, rnd.choice(("spread", "binpack")), groups)


def random_request(rnd: random.Random, names: list[str], index: int,
                   varied: bool = True) -> PlacementRequest:
    demand = Resources(rnd.randint(0, 4), rnd.randint(0, 12) * 256 * MiB,
                       rnd.randint(0, 12) * 1024 * MiB)
    rid = f"req-{index}-{rnd.randrange(10**6)}"
    if not varied:
        return PlacementRequest(rid, f"i{index}", "container", "x86_64", demand)
    return PlacementRequest(
        id=rid, name=f"i{index}", type=rnd.choice(TYPES),
        architecture=rnd.choice(("x86_64", "x86_64", "", "aarch64")), demand=demand,
        target=rnd.choice(["", "", "", "", "", "@g1", "@g2", *names[:2]]),
        placement_group=rnd.choice(["", "", "", "", *PLACEMENT_GROUPS]),
        exclude=frozenset(n for n in names[:4] if rnd.random() < 0.15))


Scenario = tuple[ClusterView, list[PlacementRequest]]


@st.composite
def scenarios(draw: st.DrawFn, max_members: int = 12, max_requests: int = 12,
              varied: bool = True, min_members: int = 1) -> Scenario:
    """A cluster and requests built from a hypothesis-drawn seed (drawing each field
    through hypothesis is too slow for clusters of dozens of members, and its bias to small
    sizes would rarely build large ones)."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    view = random_cluster(rnd, rnd.randint(min_members, max_members), varied)
    names = sorted(view.members)
    return view, [random_request(rnd, names, i, varied)
                  for i in range(rnd.randint(1, max_requests))]


def oracle_allows(m: MemberView, r: PlacementRequest, view: ClusterView) -> bool:
    """The placement rules, restated."""
    by_name = r.target == m.name
    group_target = r.target[1:] if r.target.startswith("@") else None
    if r.target and not by_name and (group_target is None or group_target not in m.groups):
        return False
    if m.name in r.exclude or m.status != "ONLINE" or m.unknown or m.witness:
        return False
    if m.mode == "manual" and not by_name:
        return False
    if m.mode == "group" and not by_name and (group_target not in m.groups):
        return False
    if (r.architecture and m.architecture != r.architecture) or r.type not in m.instance_types:
        return False
    group = view.placement_groups.get(r.placement_group)
    if group is not None and group.rigor == "strict":
        held = group.members.get(m.name, 0)
        if (group.policy == "spread" and held) or (
                group.policy == "compact" and group.members and not held):
            return False
    return (m.reserved + r.demand).fits_in(m.capacity)


def feasible(view: ClusterView, r: PlacementRequest) -> list[str]:
    if r.target and not r.target.startswith("@") and r.target not in view.members:
        return []
    return [n for n, m in view.members.items() if oracle_allows(m, r, view)]


def total_of(view: ClusterView, r: PlacementRequest, name: str) -> float:
    return scorers.scores(view.members[name], r, view)[1]


@SETTINGS
@given(scenarios())
def test_placement_honours_every_rule_and_errs_exactly_when_nothing_fits(
        scenario: Scenario) -> None:
    view, reqs = scenario
    for r in reqs:
        plan = place(view, r)
        allowed = feasible(view, r)
        assert (plan.member is None) == (not allowed), (plan.error, allowed)
        if plan.member is None:
            assert plan.error
            continue
        assert plan.member in allowed and plan.error == ""
        assert recheck(view, r, plan.member) == ""
        view.commit(plan.member, r.demand, r.placement_group)


@SETTINGS
@given(scenarios(max_requests=20))
def test_no_placement_ever_lands_on_a_witness(scenario: Scenario) -> None:
    """Whatever the request (targeted at a witness by name included), and whether the
    plan is accepted or not, a witness is never chosen and the apply check refuses it."""
    view, reqs = scenario
    harness = Harness(view)
    witnesses = [n for n, m in view.members.items() if m.witness]
    for r in reqs:
        chosen = harness.place(r)
        assert chosen not in witnesses
        for name in witnesses:
            assert recheck(harness.view, r, name) != ""
            aimed = place(harness.view, replace(r, target=name))
            assert aimed.member is None
            if name not in r.exclude:
                assert aimed.error == f"member {name} is a witness: it holds no instances"


@SETTINGS
@given(scenarios())
def test_placement_chooses_a_best_total_and_breaks_ties_by_the_seeded_shuffle(
        scenario: Scenario) -> None:
    view, reqs = scenario
    for r in reqs:
        plan = place(view, r)
        if plan.member is None:
            continue
        totals = {n: total_of(view, r, n) for n in feasible(view, r)}
        best = max(totals.values())
        assert totals[plan.member] == best
        tied = [n for n, t in totals.items() if t == best]
        assert plan.member == min(tied, key=TieBreaker(r.id).key)
        view.commit(plan.member, r.demand, r.placement_group)


@SETTINGS
@given(scenarios())
def test_placement_is_deterministic_for_a_request_id(
        scenario: Scenario) -> None:
    view, reqs = scenario
    for r in reqs:
        first, second = place(view.copy(), r), place(view.copy(), r)
        assert (first.member, first.error) == (second.member, second.error)


@SETTINGS
@given(scenarios(max_requests=30))
def test_placing_one_after_another_never_overcommits(
        scenario: Scenario) -> None:
    view, reqs = scenario
    harness = Harness(view)
    for r in reqs:
        harness.place(r)
        assert harness.overcommitted() == []


@SETTINGS
@given(scenarios(max_requests=24), st.integers(2, 4), st.randoms(use_true_random=False))
def test_many_schedulers_on_a_stale_view_never_overcommit(
        scenario: Scenario, schedulers: int,
        rnd: random.Random) -> None:
    """Each scheduler plans its share on the same stale snapshot (counting only its own
    plans); the plans reach the apply in any order; apply re-validates each and rejects the
    ones overtaken, which are retried on fresh state."""
    view, reqs = scenario
    harness = Harness(view)
    stale = view.copy()
    plans = []
    for k in range(schedulers):
        own = stale.copy()
        for r in reqs[k::schedulers]:
            plan = place(own, r)
            if plan.member is not None:
                own.commit(plan.member, r.demand, r.placement_group)
            plans.append((r, plan))
    rnd.shuffle(plans)
    for r, plan in plans:
        if plan.member is not None and harness.apply(r, plan):
            harness.place(r)  # rejected: retry on the current state
        assert harness.overcommitted() == []
    strict = harness.view.placement_groups["sp-strict"]
    before = stale.placement_groups["sp-strict"].members
    assert all(count == before.get(name, 0) or (count == 1 and name not in before)
               for name, count in strict.members.items())


def test_the_harness_retries_a_rejected_plan() -> None:
    view = ClusterView({"m1": MemberView("m1", capacity=Resources(4, 4 * MiB, 4 * MiB))})
    harness = Harness(view, force_rejections=1)
    r = PlacementRequest("r", "i", "container", "x86_64", Resources(1, MiB, MiB))
    assert harness.place(r) == "m1"
    assert [x[2] for x in harness.rejected] == ["rejected by the harness"]
    assert harness.applied == [(r, "m1")]
    harness.force_rejections = 10
    assert harness.place(r, attempts=2) == ""
