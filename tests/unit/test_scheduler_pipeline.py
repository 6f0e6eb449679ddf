"""The plain pipeline: choices, explanations, error messages and re-validation."""

from __future__ import annotations

import json

from corral_shared.resources import GiB, Resources
from scheduler.pipeline import place, recheck
from scheduler.plan import TieBreaker, explain_json, explain_text, tie_key
from scheduler.testing import member, request, view
from scheduler.view import PlacementGroupView


def test_spread_places_on_the_least_loaded_member() -> None:
    v = view(member("m1", reserved=Resources(6, 0, 0)), member("m2", reserved=Resources(2, 0, 0)))
    plan = place(v, request())
    assert plan.ok and plan.member == "m2" and plan.error == ""


def test_binpack_places_on_the_fullest_member_that_fits() -> None:
    v = view(member("m1", reserved=Resources(6, 0, 0)),
             member("m2", reserved=Resources(2, 0, 0)),
             member("m3", reserved=Resources(8, 0, 0)), policy="binpack")
    assert place(v, request()).member == "m1"


def test_the_explanation_records_every_stage_and_score() -> None:
    v = view(member("m1"), member("m2", status="OFFLINE"),
             member("m3", cpu=1, reserved=Resources(1, 0, 0)))
    plan = place(v, request())
    stages = {s.stage: s for s in plan.explanation.stages}
    assert [s.stage for s in plan.explanation.stages][0] == "target"
    assert stages["online"].dropped == {"m2": "is not online (OFFLINE)"}
    assert stages["cpu"].considered == 2
    assert stages["cpu"].dropped == {"m3": "has 0 CPUs free, needs 1 CPU"}
    assert [s.member for s in plan.explanation.scored] == ["m1"]
    assert plan.explanation.chosen == "m1" and plan.explanation.tied == ["m1"]
    assert not plan.explanation.indexed


def test_ties_break_by_a_shuffle_seeded_from_the_request_id() -> None:
    v = view(*(member(f"m{i}") for i in range(20)))
    chosen = {place(v, request(id=f"req-{i}")).member for i in range(40)}
    assert len(chosen) > 5  # different ids land on different members of the tie
    for i in range(10):
        assert place(v, request(id=f"req-{i}")).member == \
            place(v.copy(), request(id=f"req-{i}")).member
    plan = place(v, request(id="x"))
    assert plan.explanation.tied[0] == plan.member
    assert plan.explanation.tied == sorted(plan.explanation.tied,
                                           key=lambda n: tie_key("x", n))


def test_tie_breaker_matches_tie_key() -> None:
    ties = TieBreaker("some-id")
    assert ties.key("m1") == tie_key("some-id", "m1") == ties.key("m1")
    assert len(tie_key("a", "b")) == 8


def test_permissive_spread_group_prefers_members_without_it() -> None:
    group = PlacementGroupView("pg", "spread", "permissive", {"m1": 1})
    v = view(member("m1"), member("m2", reserved=Resources(7, 0, 0)), groups={"pg": group})
    assert place(v, request(placement_group="pg")).member == "m2"
    full = view(member("m1"), member("m2", cpu=1, reserved=Resources(1, 0, 0)),
                groups={"pg": group})
    assert place(full, request(placement_group="pg")).member == "m1"  # falls back


def test_permissive_compact_group_prefers_its_members() -> None:
    group = PlacementGroupView("pg", "compact", "permissive", {"m2": 1})
    v = view(member("m1"), member("m2", reserved=Resources(7, 0, 0)), groups={"pg": group})
    assert place(v, request(placement_group="pg")).member == "m2"


# -- errors name the binding constraint ----------------------------------------------------


def test_no_room_names_the_dimension_and_the_largest_free() -> None:
    v = view(member("m1", memory=4 * GiB, reserved=Resources(0, int(1.9 * GiB), 0)),
             member("m2", memory=4 * GiB, reserved=Resources(0, int(0.9 * GiB), 0)))
    plan = place(v, request(memory=4 * GiB))
    assert plan.member is None
    assert plan.error == "no member has 4 GiB free memory; largest free: m2 with 3.1 GiB"


def test_no_room_for_cpu_or_disk() -> None:
    v = view(member("m1", cpu=2), member("m2", cpu=3))
    assert place(v, request(cpu=4)).error == \
        "no member has 4 CPUs free; largest free: m2 with 3 CPUs"
    v = view(member("m1", disk=10 * GiB), member("m2", disk=20 * GiB))
    assert place(v, request(disk=40 * GiB)).error == \
        "no member has 40 GiB free disk; largest free: m2 with 20 GiB"


def test_no_online_member() -> None:
    v = view(member("m1", status="OFFLINE"), member("m2", status="EVACUATED"))
    assert place(v, request()).error == "no online member"


def test_a_targeted_member_that_is_not_online() -> None:
    v = view(member("m1"), member("m3", status="OFFLINE"))
    assert place(v, request(target="m3")).error == "member m3 is not online (OFFLINE)"


def test_a_lone_manual_member() -> None:
    v = view(member("m4", mode="manual"))
    assert place(v, request()).error == \
        "member m4 only takes targeted instances (scheduler.instance=manual)"
    assert place(v, request(target="m4")).member == "m4"


def test_every_member_in_manual_or_group_mode() -> None:
    v = view(member("m1", mode="manual"), member("m2", mode="group"))
    assert "no member takes untargeted instances" in place(v, request()).error


def test_unknown_target_member_and_empty_group() -> None:
    v = view(member("m1"), member("m2"))
    assert place(v, request(target="m9")).error == "cluster member 'm9' not found"
    assert place(v, request(target="@gpu")).error == "no cluster member is in group gpu"
    assert place(v, request(target="@")).error.startswith("a cluster group target needs")


def test_architecture_and_type_errors() -> None:
    v = view(member("m1"), member("m2"))
    assert place(v, request(architecture="aarch64")).error == \
        "no online member has architecture aarch64"
    assert place(v, request(type="virtual-machine")).error == \
        "no online member runs virtual-machine instances"


def test_exclude_leaves_nothing() -> None:
    v = view(member("m1"), member("m2"))
    assert place(v, request(exclude=frozenset({"m1", "m2"}))).error == \
        "no member is left once m1, m2 are excluded"
    assert place(view(member("m1")), request(exclude=frozenset({"m1"}))).error == \
        "member m1 is excluded (the instance is leaving it)"


def test_unknown_capacity_everywhere() -> None:
    v = view(member("m1", unknown=("disk",)), member("m2", unknown=("cpu",)))
    assert place(v, request()).error == "no online member has reported its capacity"


def test_placement_group_errors() -> None:
    v = view(member("m1"), member("m2"))
    assert "placement group 'pg' not found" in place(v, request(placement_group="pg")).error
    spread = PlacementGroupView("pg", "spread", "strict", {"m1": 1, "m2": 1})
    v = view(member("m1"), member("m2"), groups={"pg": spread})
    assert place(v, request(placement_group="pg")).error == (
        "placement group pg leaves no member: every eligible member already holds one of "
        "its instances (policy=spread, rigor=strict)")
    compact = PlacementGroupView("pg", "compact", "strict", {"m3": 1})
    v = view(member("m1"), member("m2"), member("m3", status="OFFLINE"), groups={"pg": compact})
    assert place(v, request(placement_group="pg")).error == (
        "placement group pg leaves no member: its instances are on m3, none of them "
        "eligible (policy=compact, rigor=strict)")


def test_empty_cluster() -> None:
    assert place(view(), request()).error == "the cluster has no members"


# -- recheck -------------------------------------------------------------------------------


def test_recheck_accepts_a_plan_that_still_fits() -> None:
    v = view(member("m1"), member("m2"))
    plan = place(v, request())
    assert plan.member is not None and recheck(v, request(), plan.member) == ""


def test_recheck_rejects_a_plan_the_world_has_overtaken() -> None:
    v = view(member("m1", cpu=2))
    r = request(cpu=2)
    plan = place(v, r)
    assert plan.member == "m1"
    v.commit("m1", Resources(1, 0, 0))  # another placement won the race
    assert recheck(v, r, "m1") == "member m1 has 1 CPU free, needs 2 CPUs"
    v.members["m1"].status = "OFFLINE"
    assert recheck(v, r, "m1") == "member m1 is not online (OFFLINE)"
    assert recheck(v, r, "m9") == "cluster member 'm9' not found"


def test_recheck_enforces_strict_groups() -> None:
    v = view(member("m1"), member("m2"), groups={"pg": PlacementGroupView("pg", "spread")})
    r = request(placement_group="pg")
    assert recheck(v, r, "m1") == ""
    v.commit("m1", r.demand, "pg")
    assert "already holds an instance of placement group pg" in recheck(v, r, "m1")
    assert recheck(v, request(placement_group="nope"), "m1").startswith("placement group")


# -- the API form --------------------------------------------------------------------------


def test_explain_json_is_json_and_complete() -> None:
    v = view(member("m1"), member("m2", status="OFFLINE"))
    data = explain_json(place(v, request(id="abc", target="@g")))
    assert json.loads(json.dumps(data)) == data
    assert data["member"] is None and data["error"]
    assert data["request"]["id"] == "abc" and data["request"]["target"] == "@g"
    assert data["stages"][0] == {"stage": "target", "considered": 2, "kept": 0,
                                 "dropped": {"m1": "is not in cluster group g",
                                             "m2": "is not in cluster group g"}}
    ok = explain_json(place(v, request()))
    assert ok["member"] == "m1" and ok["chosen"] == "m1"
    assert ok["scores"][0]["member"] == "m1" and "spread" in ok["scores"][0]["scores"]


def test_explain_text_summarises_for_a_terminal() -> None:
    v = view(*(member(f"m{i}", status="OFFLINE") for i in range(15)), member("ok"))
    lines = explain_text(place(v, request()), limit=3)
    assert lines[0].startswith("request i-r1: container, 1 CPU, 1 GiB memory")
    assert "    ... and 12 more" in lines
    assert lines[-1] == "placed on ok"
    assert explain_text(place(view(), request()))[-1] == "error: the cluster has no members"
