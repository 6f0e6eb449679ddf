"""The witness: a voter that holds no instances and no storage (``init --join --witness``).

Membership in apply (it always votes, takes a host's seat when the seats are full, is
never demoted), the scheduler's ``witness`` filter (with its reason in the explanation),
and the plan-apply check that refuses a placement or a move onto a witness.
"""

from __future__ import annotations

import pickle
from typing import Any

from cluster.state.apply import apply
from cluster.state.apply_members import OFFLINE, VOTER, WITNESS, plan_promotions
from cluster.state.cluster_view import view_from_state
from cluster.state.commands import Command
from cluster.state.model import State
from scheduler import filters
from scheduler.pipeline import place
from scheduler.plan import explain_text
from scheduler.testing import member, request, view
from simulator.index import IndexedScheduler

FP = "a" * 64
BIG = {"cpu": 1024, "memory": 2.0**50, "disk": 2.0**50}
_ids = iter(range(10**6))
REASON = "is a witness: it holds no instances"


def cmd(type_: str, t: float = 100.0, **args: Any) -> Command:
    return Command(id=f"w{next(_ids)}", type=type_, args=args, time=t)


def cluster_of_one() -> State:
    state = State()
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "raft_address": "m1:1",
                                                          "capacity": BIG},
                            pool={"name": "default", "driver": "dir"},
                            network={"name": "br0"})).ok
    assert apply(state, cmd("image.add", fingerprint=FP, info={"type": "container"},
                            member="m1")).ok
    return state


def join(state: State, name: str, t: float = 100.0, witness: bool = False) -> Any:
    apply(state, cmd("join_token.add", t=t - 1, name=name, secret_hash="h",
                     expires_at=t + 3600))
    return apply(state, cmd("member.join", t=t, name=name, secret_hash="h",
                            address=f"{name}:8443", raft_address=f"{name}:8444",
                            capacity=BIG, witness=witness))


def two_hosts_and_a_witness() -> State:
    state = cluster_of_one()
    assert join(state, "m2").ok
    assert join(state, "w", witness=True).ok
    return state


# -- membership --------------------------------------------------------------------------


def test_a_witness_joins_as_a_voter_with_its_role() -> None:
    state = two_hosts_and_a_witness()
    assert state.members["w"].roles == [VOTER, WITNESS]
    assert [m.name for m in state.members.values() if VOTER in m.roles] == ["m1", "m2", "w"]


def test_a_witness_takes_the_seat_of_the_host_that_joined_last_when_seats_are_full() -> None:
    state = cluster_of_one()
    assert join(state, "m2", t=101).ok and join(state, "m3", t=102).ok
    result = join(state, "w", t=103, witness=True)
    assert result.ok and result.value == {"roles": [VOTER, WITNESS]}
    assert {n: m.roles for n, m in state.members.items()} == {
        "m1": [VOTER], "m2": [VOTER], "m3": [], "w": [VOTER, WITNESS]}


def test_a_witness_takes_an_offline_hosts_seat_first() -> None:
    state = cluster_of_one()
    assert join(state, "m2", t=101).ok and join(state, "m3", t=102).ok
    state.members["m1"].liveness = OFFLINE
    assert join(state, "w", t=103, witness=True).ok
    assert state.members["m1"].roles == [] and state.members["m3"].roles == [VOTER]


def test_a_witness_is_refused_when_every_seat_is_a_witnesss_and_nothing_changes() -> None:
    state = cluster_of_one()
    state.config["cluster.max_voters"] = "2"
    assert join(state, "w1", witness=True).ok
    assert join(state, "w2", witness=True).ok  # takes m1's seat: both seats are witnesses
    apply(state, cmd("join_token.add", name="w3", secret_hash="h", expires_at=5000.0))
    before = pickle.dumps((state.members, state.join_tokens))
    refused = apply(state, cmd("member.join", name="w3", secret_hash="h", address="w3:1",
                               raft_address="w3:2", witness=True))
    assert refused.code == 409 and "held by a witness" in refused.error
    assert pickle.dumps((state.members, state.join_tokens)) == before


def test_a_host_joining_after_the_witness_counts_it_toward_max_voters() -> None:
    state = two_hosts_and_a_witness()
    assert join(state, "m3").ok
    assert state.members["m3"].roles == []


def test_a_witness_cannot_be_demoted_and_the_role_cannot_be_given() -> None:
    state = two_hosts_and_a_witness()
    before = pickle.dumps(state.members)
    demote = apply(state, cmd("member.roles", name="w", roles=[]))
    assert demote.code == 400 and "witness" in demote.error
    update = apply(state, cmd("member.update", name="w", roles=[WITNESS]))
    assert update.code == 400 and "always votes" in update.error
    given = apply(state, cmd("member.update", name="m2", roles=[VOTER, WITNESS]))
    assert given.code == 400 and "--witness" in given.error
    assert pickle.dumps(state.members) == before


def test_a_witness_keeps_its_role_when_a_put_leaves_it_out() -> None:
    state = two_hosts_and_a_witness()
    assert apply(state, cmd("member.update", name="w", roles=[VOTER],
                            description="tie breaker")).ok
    assert state.members["w"].roles == [VOTER, WITNESS]
    assert state.members["w"].description == "tie breaker"


def test_the_voters_controller_never_swaps_a_witness_out_or_in() -> None:
    state = two_hosts_and_a_witness()
    assert join(state, "m3").ok  # a follower that could take a vote
    state.members["w"].liveness = OFFLINE
    assert plan_promotions(state) == []
    state.members["m2"].liveness = OFFLINE
    assert plan_promotions(state) == [("m2", "m3")]


# -- scheduling ---------------------------------------------------------------------------


def test_the_witness_filter_refuses_a_witness_with_its_reason() -> None:
    v = view(member("m1"), member("w", witness=True))
    assert filters.witness(v.members["w"], request(), v) == REASON
    assert filters.witness(v.members["m1"], request(), v) is None


def test_a_targeted_witness_is_refused_with_the_reason_in_the_explanation() -> None:
    v = view(member("m1"), member("w", witness=True))
    plan = place(v, request(target="w"))
    assert plan.member is None and plan.error == f"member w {REASON}"
    assert f"    - w {REASON}" in explain_text(plan)


def test_untargeted_placement_skips_the_witness_and_says_why() -> None:
    v = view(member("m1", cpu=1), member("w", witness=True, cpu=64))
    plan = place(v, request())
    assert plan.member == "m1"
    stages = {s.stage: s.dropped for s in plan.explanation.stages}
    assert stages["witness"] == {"w": REASON}


def test_a_cluster_of_hosts_that_are_all_offline_names_the_hosts_not_the_witness() -> None:
    v = view(member("m1", status="OFFLINE"), member("m2", status="OFFLINE"),
             member("w", witness=True))
    assert place(v, request()).error == "no online member"
    only = view(member("w1", witness=True), member("w2", witness=True))
    assert place(only, request()).error == \
        "only witnesses are left, and a witness holds no instances"


def test_the_index_never_offers_a_witness() -> None:
    v = view(member("m1", cpu=1), member("w", witness=True, cpu=64))
    scheduler = IndexedScheduler(v)
    assert scheduler.place(request()).member == "m1"
    assert scheduler.place(request(target="w")).error == f"member w {REASON}"


def test_the_view_carries_the_witness_role() -> None:
    members = view_from_state(two_hosts_and_a_witness()).members
    assert {n: m.witness for n, m in members.items()} == {"m1": False, "m2": False, "w": True}


def test_apply_refuses_an_instance_placed_on_a_witness() -> None:
    state = two_hosts_and_a_witness()
    refused = apply(state, cmd("instance.create", uid="u1", name="c1", location="w",
                               image=FP, profiles=["default"]))
    assert refused.code == 409 and REASON in refused.error and "c1" not in state.instances


def test_apply_refuses_a_move_onto_a_witness() -> None:
    state = two_hosts_and_a_witness()
    assert apply(state, cmd("instance.create", uid="u1", name="c1", location="m1", image=FP,
                            profiles=["default"])).ok
    assert apply(state, cmd("instance.observed", uid="u1", generation=1, status="Stopped",
                            error="")).ok  # created: the agent reported
    refused = apply(state, cmd("instance.move_begin", name="c1", uid="u1", target="w"))
    assert refused.code == 409 and REASON in refused.error
    assert state.instances["c1"].moving_to == ""
