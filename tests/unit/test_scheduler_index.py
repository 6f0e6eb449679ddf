"""The index: as good as the plain pipeline, kept in step by commit/release/update."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from corral_shared.resources import GiB, Resources
from scheduler import scorers
from scheduler.pipeline import place, recheck
from scheduler.request import PlacementRequest
from scheduler.testing import Harness, member, request, view
from scheduler.view import ClusterView, PlacementGroupView
from simulator.index import EXACT_BELOW, IndexedScheduler, candidate_limit
from tests.unit.test_scheduler_properties import (
    SETTINGS,
    Scenario,
    random_cluster,
    random_request,
    scenarios,
)


def total_of(v: ClusterView, r: PlacementRequest, name: str) -> float:
    return scorers.scores(v.members[name], r, v)[1]


def assert_same_as_plain(scheduler: IndexedScheduler, reqs: list[PlacementRequest]) -> None:
    """Each request: the index chooses the plain pipeline's member or one of equal total,
    errs exactly when the pipeline errs, with the same message; then both commit it."""
    v = scheduler.view
    for r in reqs:
        indexed, plain = scheduler.place(r), place(v, r)
        assert (indexed.member is None) == (plain.member is None), (indexed, plain.error)
        if indexed.member is None or plain.member is None:
            assert indexed.error == plain.error
            continue
        assert recheck(v, r, indexed.member) == "" and indexed.explanation.indexed
        assert indexed.member == plain.member or \
            total_of(v, r, indexed.member) == total_of(v, r, plain.member)
        scheduler.commit(indexed.member, r.demand, r.placement_group)


@SETTINGS
@given(scenarios(max_members=EXACT_BELOW, max_requests=16))
def test_indexed_and_plain_agree_on_small_clusters(scenario: Scenario) -> None:
    v, reqs = scenario
    assert_same_as_plain(IndexedScheduler(v), reqs)


@SETTINGS
@given(scenarios(max_members=EXACT_BELOW, max_requests=16, varied=False))
def test_indexed_and_plain_agree_on_uniform_clusters(scenario: Scenario) -> None:
    """Identical static attributes: everything is decided by the shelves and the bound."""
    v, reqs = scenario
    assert_same_as_plain(IndexedScheduler(v), reqs)


@SETTINGS
@given(st.integers(0, 2**32))
def test_the_exact_index_agrees_with_plain_on_larger_clusters(seed: int) -> None:
    rnd = random.Random(seed)
    v = random_cluster(rnd, rnd.randint(65, 200), varied=rnd.random() < 0.5)
    names = sorted(v.members)
    reqs = [random_request(rnd, names, i) for i in range(6)]
    assert_same_as_plain(IndexedScheduler(v, exact=True), reqs)


@SETTINGS
@given(st.integers(0, 2**32))
def test_the_limited_index_places_feasibly_and_errs_only_when_nothing_fits(seed: int) -> None:
    rnd = random.Random(seed)
    v = random_cluster(rnd, rnd.randint(65, 200))
    scheduler = IndexedScheduler(v, limit=2)
    harness = Harness(scheduler.view)
    for i in range(10):
        r = random_request(rnd, sorted(v.members), i)
        indexed, plain = scheduler.place(r), place(v, r)
        assert (indexed.member is None) == (plain.member is None)
        if indexed.member is not None:
            assert harness.apply(r, indexed) == ""
            scheduler._reshelve(indexed.member)  # the harness committed to the same view
        assert harness.overcommitted() == []


def test_candidate_limit_is_exhaustive_up_to_64_then_logarithmic() -> None:
    assert candidate_limit(1) is None and candidate_limit(EXACT_BELOW) is None
    assert candidate_limit(65) == 8
    assert candidate_limit(10_000) == 14
    assert IndexedScheduler(view(member("m1")), exact=True).limit is None
    assert IndexedScheduler(view(member("m1")), limit=3).limit == 3


def test_the_index_is_deterministic_for_a_request_id() -> None:
    rnd = random.Random(7)
    base = random_cluster(rnd, 300, varied=False)
    reqs = [random_request(rnd, sorted(base.members), i, varied=False) for i in range(20)]
    first = [IndexedScheduler(base.copy()).place(r).member for r in reqs]
    assert first == [IndexedScheduler(base.copy()).place(r).member for r in reqs]


def test_commit_and_release_move_a_member_in_the_order() -> None:
    scheduler = IndexedScheduler(view(member("a"), member("b")))
    r = request(cpu=4, memory=0, disk=0)
    first = scheduler.place(r).member
    assert first is not None
    scheduler.commit(first, r.demand)
    other = "b" if first == "a" else "a"
    assert scheduler.place(request(id="x", cpu=1, memory=0, disk=0)).member == other
    scheduler.release(first, r.demand)
    assert scheduler.view.members[first].reserved == Resources(0, 0, 0)


def test_update_member_takes_a_member_out_and_back() -> None:
    scheduler = IndexedScheduler(view(member("a"), member("b", reserved=Resources(4, 0, 0))))
    assert scheduler.place(request()).member == "a"
    scheduler.update_member(member("a", status="EVACUATED"))
    assert scheduler.place(request()).member == "b"
    scheduler.update_member(member("a", mode="manual"))
    assert scheduler.place(request()).member == "b"
    assert scheduler.place(request(target="a")).member == "a"
    scheduler.update_member(member("c", cpu=64))
    assert scheduler.place(request()).member == "c"
    scheduler.remove_member("c")
    assert "c" not in scheduler.view.members
    assert scheduler.place(request()).member == "b"


def test_a_member_changed_in_place_and_updated_does_not_taint_its_old_class() -> None:
    a, b = member("a"), member("b", reserved=Resources(4, 0, 0))
    scheduler = IndexedScheduler(view(a, b))
    a.mode = "manual"
    scheduler.update_member(a)
    plan = scheduler.place(request())
    assert plan.member == "b" and plan.explanation.indexed  # found by the index itself


def test_group_mode_members_come_out_only_for_their_group() -> None:
    scheduler = IndexedScheduler(view(member("a", mode="group", groups=frozenset({"g"})),
                                      member("b", reserved=Resources(6, 0, 0))))
    assert scheduler.place(request()).member == "b"
    assert scheduler.place(request(target="@g")).member == "a"
    assert scheduler.place(request(target="@h")).error == "no cluster member is in group h"


def test_targeted_errors_match_the_plain_pipeline() -> None:
    v = view(member("a", status="OFFLINE"), member("b", cpu=1))
    scheduler = IndexedScheduler(v)
    for r in (request(target="a"), request(target="b", cpu=2), request(target="zz")):
        assert scheduler.place(r).error == place(v, r).error


def test_placement_group_rules_in_the_index() -> None:
    groups = {"sp": PlacementGroupView("sp", "spread", "strict", {"a": 1}),
              "pp": PlacementGroupView("pp", "spread", "permissive", {"a": 1, "b": 1}),
              "cs": PlacementGroupView("cs", "compact", "strict", {"c": 1}),
              "cp": PlacementGroupView("cp", "compact", "permissive", {"c": 1})}
    v = view(member("a"), member("b", reserved=Resources(7, 0, 0)),
             member("c", reserved=Resources(6, 0, 0)), groups=groups)
    scheduler = IndexedScheduler(v)
    assert scheduler.place(request(placement_group="sp")).member in ("b", "c")
    assert scheduler.place(request(placement_group="pp")).member == "c"
    assert scheduler.place(request(placement_group="cs")).member == "c"
    assert scheduler.place(request(placement_group="cp")).member == "c"
    assert scheduler.place(request(placement_group="cs", cpu=3)).error == place(
        v, request(placement_group="cs", cpu=3)).error
    assert scheduler.place(request(placement_group="cp", cpu=3)).member == "a"  # falls back
    full = view(member("a", cpu=1), groups={"pp": groups["pp"]})
    assert IndexedScheduler(full).place(request(placement_group="pp")).member == "a"


def test_an_indexed_plan_has_an_abbreviated_explanation() -> None:
    v = view(*(member(f"m{i}", reserved=Resources(i % 4, 0, 0)) for i in range(100)))
    plan = IndexedScheduler(v).place(request())
    ex = plan.explanation
    assert ex.indexed and ex.chosen == plan.member and ex.stages == []
    assert ex.scored and ex.scored[0].total >= ex.scored[-1].total
    assert ex.notes and ex.notes[0].startswith("index:")
    failed = IndexedScheduler(v).place(request(cpu=100))
    assert failed.error == "no member has 100 CPUs free; largest free: m96 with 8 CPUs"
    assert failed.explanation.stages  # the full pipeline explains failures


def test_binpack_through_the_index_fills_the_fullest_member() -> None:
    v = view(member("a", reserved=Resources(2, 0, 0)), member("b", reserved=Resources(6, 0, 0)),
             member("c", memory=64 * GiB), policy="binpack")
    assert IndexedScheduler(v).place(request()).member == "b"
