"""Each feasibility filter, and each scorer, on its own."""

from __future__ import annotations

import pytest

from corral_shared.resources import GiB, Resources
from scheduler import filters, scorers
from scheduler.testing import member, request, view
from scheduler.view import PlacementGroupView


def test_target_member_keeps_only_that_member() -> None:
    v = view(member("m1"), member("m2"))
    r = request(target="m2")
    assert filters.target(v.members["m1"], r, v) == "is not the target (m2)"
    assert filters.target(v.members["m2"], r, v) is None
    assert filters.target(v.members["m1"], request(), v) is None


def test_target_group_keeps_the_members_of_that_group() -> None:
    v = view(member("m1", groups=frozenset({"rack1"})), member("m2"))
    r = request(target="@rack1")
    assert filters.target(v.members["m1"], r, v) is None
    assert filters.target(v.members["m2"], r, v) == "is not in cluster group rack1"


def test_excluded_members_are_dropped() -> None:
    v = view(member("m1"), member("m2"))
    r = request(exclude=frozenset({"m1"}))
    assert filters.exclude(v.members["m1"], r, v) == "is excluded (the instance is leaving it)"
    assert filters.exclude(v.members["m2"], r, v) is None


def test_manual_members_take_only_instances_targeted_at_them() -> None:
    v = view(member("m1", mode="manual", groups=frozenset({"g"})))
    m = v.members["m1"]
    assert filters.mode(m, request(), v) == \
        "only takes targeted instances (scheduler.instance=manual)"
    assert filters.mode(m, request(target="@g"), v) is not None
    assert filters.mode(m, request(target="m1"), v) is None


def test_group_members_take_instances_targeted_at_them_or_their_groups() -> None:
    v = view(member("m1", mode="group", groups=frozenset({"g"})))
    m = v.members["m1"]
    assert "scheduler.instance=group" in (filters.mode(m, request(), v) or "")
    assert filters.mode(m, request(target="@other"), v) is not None
    assert filters.mode(m, request(target="@g"), v) is None
    assert filters.mode(m, request(target="m1"), v) is None


def test_all_members_take_anything() -> None:
    v = view(member("m1"))
    assert filters.mode(v.members["m1"], request(), v) is None


@pytest.mark.parametrize("status", ["OFFLINE", "EVACUATED"])
def test_offline_and_evacuated_members_are_never_candidates(status: str) -> None:
    v = view(member("m1", status=status))
    assert filters.online(v.members["m1"], request(), v) == f"is not online ({status})"


def test_architecture_must_match_unless_the_request_accepts_any() -> None:
    v = view(member("m1", architecture="aarch64"))
    m = v.members["m1"]
    assert filters.architecture(m, request(), v) == "has architecture aarch64, not x86_64"
    assert filters.architecture(m, request(architecture="aarch64"), v) is None
    assert filters.architecture(m, request(architecture=""), v) is None


def test_instance_type_must_be_supported() -> None:
    v = view(member("m1"))
    m = v.members["m1"]
    assert filters.instance_type(m, request(type="virtual-machine"), v) == \
        "does not run virtual-machine instances"
    assert filters.instance_type(m, request(), v) is None


def test_unknown_capacity_takes_nothing() -> None:
    v = view(member("m1", unknown=("memory",)))
    assert filters.capacity_known(v.members["m1"], request(), v) == \
        "has not reported its memory capacity (nor set scheduler.capacity.*)"


def test_free_resources_must_cover_the_demand() -> None:
    v = view(member("m1", cpu=4, memory=8 * GiB, disk=50 * GiB,
                    reserved=Resources(3, 5 * GiB, 45 * GiB)))
    m = v.members["m1"]
    assert filters.cpu(m, request(cpu=1), v) is None
    assert filters.cpu(m, request(cpu=2), v) == "has 1 CPU free, needs 2 CPUs"
    assert filters.memory(m, request(memory=3 * GiB), v) is None
    assert filters.memory(m, request(memory=4 * GiB), v) == \
        "has 3 GiB free memory, needs 4 GiB"
    assert filters.disk(m, request(disk=6 * GiB), v) == "has 5 GiB free disk, needs 6 GiB"


def spread_group(rigor: str, policy: str = "spread", **members: int) -> PlacementGroupView:
    return PlacementGroupView("pg", policy, rigor, dict(members))


def test_strict_spread_group_keeps_one_instance_per_member() -> None:
    v = view(member("m1"), member("m2"), groups={"pg": spread_group("strict", m1=1)})
    r = request(placement_group="pg")
    assert filters.placement_group(v.members["m1"], r, v) == \
        "already holds an instance of placement group pg (policy=spread, rigor=strict)"
    assert filters.placement_group(v.members["m2"], r, v) is None


def test_strict_compact_group_stays_on_its_members() -> None:
    v = view(member("m1"), member("m2"),
             groups={"pg": spread_group("strict", "compact", m1=2)})
    r = request(placement_group="pg")
    assert filters.placement_group(v.members["m1"], r, v) is None
    assert "compact" in (filters.placement_group(v.members["m2"], r, v) or "")
    empty = view(member("m1"), groups={"pg": spread_group("strict", "compact")})
    assert filters.placement_group(empty.members["m1"], r, empty) is None


def test_permissive_groups_never_filter() -> None:
    v = view(member("m1"), groups={"pg": spread_group("permissive", m1=1)})
    assert filters.placement_group(v.members["m1"], request(placement_group="pg"), v) is None


def test_first_failure_follows_the_filter_order() -> None:
    v = view(member("m1", status="OFFLINE", architecture="aarch64"))
    assert filters.first_failure(v.members["m1"], request(), v) == \
        ("online", "is not online (OFFLINE)")
    assert filters.first_failure(view(member("m2")).members["m2"], request(),
                                 view(member("m2"))) is None


# -- scorers ------------------------------------------------------------------------------


def test_load_fraction_is_the_most_committed_dimension() -> None:
    m = member("m1", cpu=10, memory=10 * GiB, disk=100 * GiB,
               reserved=Resources(2, 5 * GiB, 10 * GiB))
    assert scorers.load_now(m) == 0.5
    assert scorers.load_after(m, Resources(6, 0, 0)) == 0.8
    assert scorers.load_after(m, Resources(0, 0, 0)) == 0.5


def test_spread_prefers_the_least_loaded_member_after_placement() -> None:
    small = member("small", cpu=4)  # empty, but 2 CPUs fill half of it
    big = member("big", cpu=64, reserved=Resources(16, 0, 0))  # a quarter used
    v, r = view(small, big), request(cpu=2, memory=0, disk=0)
    assert scorers.spread(big, r, v) > scorers.spread(small, r, v)
    assert scorers.spread(small, r, v) == 0.5


def test_binpack_prefers_the_fullest_member_that_fits() -> None:
    a = member("a", cpu=8, reserved=Resources(6, 0, 0))
    b = member("b", cpu=8, reserved=Resources(1, 0, 0))
    v = view(a, b, policy="binpack")
    r = request(cpu=1, memory=0, disk=0)
    assert scorers.binpack(a, r, v) > scorers.binpack(b, r, v)
    assert scorers.binpack(a, r, v) == 7 / 8


@pytest.mark.parametrize(("policy", "rigor", "held", "expected"), [
    ("spread", "permissive", 0, 1.0), ("spread", "permissive", 1, 0.0),
    ("compact", "permissive", 1, 1.0), ("compact", "permissive", 0, 0.0),
    ("spread", "strict", 0, 0.0), ("compact", "strict", 1, 0.0),
])
def test_placement_group_preference(policy: str, rigor: str, held: int,
                                    expected: float) -> None:
    group = PlacementGroupView("pg", policy, rigor, {"m1": held} if held else {})
    v = view(member("m1"), groups={"pg": group})
    assert scorers.placement_group(v.members["m1"], request(placement_group="pg"), v) == \
        expected
    assert scorers.placement_group(v.members["m1"], request(), v) == 0.0


def test_group_weight_outweighs_the_whole_resource_range() -> None:
    assert scorers.total(0.0, 1.0) > scorers.total(1.0, 0.0)
    assert scorers.total(0.1234567891234, 0.0) == 0.123456789


def test_scores_names_the_policy() -> None:
    v = view(member("m1"), policy="binpack")
    parts, total = scorers.scores(v.members["m1"], request(), v)
    assert set(parts) == {"binpack", "placement_group"}
    assert total == scorers.total(parts["binpack"], 0.0)
