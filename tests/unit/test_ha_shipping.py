"""The node side of HA replication, as pure functions: which local instances ship and
when (``replication.plan``), what a holder admits (``ha.shipment_problem`` and the PUT's
query), and what a returning member removes (``stale_copies``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.api.handlers.ha_replicas import parse_offer
from cluster.api.response import ApiError
from cluster.state.apply import apply
from cluster.state.ha import shipment_problem
from cluster.state.model import Replica, State
from node_agent.replication import plan
from node_agent.stale_copies import LocalCopy, copies_to_drop, replicas_to_drop
from tests.unit.test_apply_ha import cluster, cmd, controller, ha_running, launch, synced

SNAP = "r" + "1" * 20
OLDER = "r" + "0" * 19 + "9"


def holders(state: State, name: str, *members: str) -> None:
    uid = state.instances[name].uid
    assert apply(state, cmd("instance.ha_replicas", uid=uid, members=list(members),
                            epoch=controller(state))).ok


def ha_with_holder(**config: str) -> State:
    state = cluster()
    ha_running(state, **config)
    holders(state, "c1", "m2")
    return state


def fail_over(state: State, target: str = "m2") -> None:
    result = apply(state, cmd("instance.failover", uid="u-c1", name="c1", target=target,
                              placement_epoch=state.instances["c1"].epoch,
                              epoch=controller(state), lag=1.0))
    assert result.ok, result.error


# -- what ships ----------------------------------------------------------------------


def test_a_local_ha_instance_with_a_holder_ships_to_it() -> None:
    state = ha_with_holder(**{"cluster.ha.replication_interval": "2"})
    found = plan.local_sources(state, "m1")
    assert found == [plan.Source("u-c1", "c1", "default", 0, 2.0, ("m2",))]
    assert plan.local_sources(state, "m2") == []
    (state.instances["c1"].replicas or {})["m1"] = Replica("m1")  # a move made it local
    assert plan.local_sources(state, "m1")[0].holders == ("m2",)  # never to itself


def test_nothing_ships_without_holders_or_ha() -> None:
    state = cluster()
    ha_running(state)
    assert launch(state, "plain").ok
    assert plan.local_sources(state, "m1") == []  # no holders chosen yet; plain is no HA


def test_a_failover_target_ships_only_once_it_made_the_instance() -> None:
    state = cluster()
    ha_running(state)
    holders(state, "c1", "m2", "m3")
    assert synced(state, "c1", "m2", 50.0, snapshot=SNAP).ok
    fail_over(state)
    assert plan.local_sources(state, "m1") == []  # the old member: never again
    assert plan.local_sources(state, "m2") == []  # not created from the replica yet
    inst = state.instances["c1"]
    assert apply(state, cmd("instance.observed", uid="u-c1", generation=inst.generation,
                            status="Running", error="", created=True)).ok
    assert plan.local_sources(state, "m2") == [
        plan.Source("u-c1", "c1", "default", 1, 5.0, ("m3",))]


def test_a_shipment_is_due_once_per_interval_from_when_the_last_began() -> None:
    source = plan.Source("u", "c", "default", 0, 5.0, ("m2", "m3"))
    first = plan.due([source], {}, set(), now=100.0)
    assert [s.holder for s in first] == ["m2", "m3"]
    began = {s.key: 100.0 for s in first}
    assert plan.due([source], began, set(), now=104.9) == []
    assert plan.due([source], began, {("u", "m2")}, now=105.0) == [
        plan.Shipment(source, "m3")]  # m2's shipment is still under way


@given(interval=st.floats(1, 60), last=st.dictionaries(
    st.sampled_from(["m2", "m3", "m4"]), st.floats(0, 200)),
       busy=st.sets(st.sampled_from(["m2", "m3", "m4"])), now=st.floats(0, 300))
def test_due_never_starts_a_second_shipment_nor_one_within_the_interval(
        interval: float, last: dict[str, float], busy: set[str], now: float) -> None:
    source = plan.Source("u", "c", "default", 0, interval, ("m2", "m3", "m4"))
    began = {("u", m): at for m, at in last.items()}
    started = {s.holder for s in plan.due([source], began, {("u", m) for m in busy}, now)}
    for member in ("m2", "m3", "m4"):
        expected = member not in busy and (member not in last
                                           or now - last[member] >= interval)
        assert (member in started) == expected


def test_the_memory_of_past_shipments_follows_the_holders() -> None:
    source = plan.Source("u", "c", "default", 0, 5.0, ("m3",))
    began = {("u", "m2"): 1.0, ("u", "m3"): 2.0, ("gone", "m2"): 3.0}
    assert plan.still_wanted(began, [source]) == {("u", "m3"): 2.0}


def test_the_parent_is_the_holders_newest_snapshot() -> None:
    names = [f"r{n:020d}" for n in (10, 20, 30, 40)]
    assert plan.parent_for(reversed(names)) == names[-1]
    assert plan.parent_for([]) is None


# -- what a holder admits ------------------------------------------------------------


def test_the_holder_admits_only_the_current_source_under_the_current_epoch() -> None:
    state = ha_with_holder()
    inst = state.instances["c1"]
    assert shipment_problem(inst, "m2", "m1", 0) == ""
    assert "holds no replica" in shipment_problem(inst, "m3", "m1", 0)
    assert "lives on m1, not m3" in shipment_problem(inst, "m2", "m3", 0)
    assert "Stale placement epoch 1" in shipment_problem(inst, "m2", "m1", 1)
    assert "Stale placement epoch '0'" in shipment_problem(inst, "m2", "m1", "0")


def test_a_fenced_old_source_is_refused_after_a_failover() -> None:
    state = cluster()
    ha_running(state)
    holders(state, "c1", "m2", "m3")
    assert synced(state, "c1", "m2", 50.0, snapshot=SNAP).ok
    fail_over(state)
    inst = state.instances["c1"]
    assert "Stale placement epoch 0" in shipment_problem(inst, "m3", "m1", 0)
    assert "lives on m2, not m1" in shipment_problem(inst, "m3", "m1", 1)
    assert shipment_problem(inst, "m3", "m2", 1) == ""


@pytest.mark.parametrize(("query", "error"), [
    ({"parent": SNAP, "source": "m1", "placement_epoch": "0"}, "Invalid replica snapshot"),
    ({"snapshot": "x", "source": "m1", "placement_epoch": "0"}, "Invalid replica snapshot"),
    ({"snapshot": SNAP, "parent": "../x", "source": "m1", "placement_epoch": "0"},
     "Invalid parent"),
    ({"snapshot": SNAP, "placement_epoch": "0"}, "source member is required"),
    ({"snapshot": SNAP, "source": "m1", "placement_epoch": "-1"}, "Invalid placement epoch"),
    ({"snapshot": SNAP, "source": "m1"}, "Invalid placement epoch"),
])
def test_a_malformed_offer_is_refused(query: dict[str, str], error: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_offer("u", query)
    assert caught.value.code == 400 and error in caught.value.message


def test_an_offer_without_parent_is_a_whole_volume() -> None:
    offer = parse_offer("u", {"snapshot": SNAP, "parent": "", "source": "m1",
                              "placement_epoch": "3"})
    assert (offer.parent, offer.placement_epoch) == (None, 3)
    assert parse_offer("u", {"snapshot": SNAP, "parent": OLDER, "source": "m1",
                             "placement_epoch": "3"}).parent == OLDER


# -- what a returning member removes -------------------------------------------------


def moved_away() -> State:
    """c1 failed over from m1 to m2; plain p1 lives on m1; w moves to m1."""
    state = cluster()
    ha_running(state)
    holders(state, "c1", "m2")
    assert synced(state, "c1", "m2", 50.0, snapshot=SNAP).ok
    fail_over(state)
    assert launch(state, "p1").ok
    return state


def test_a_copy_of_an_instance_that_lives_elsewhere_is_removed() -> None:
    state = moved_away()
    copies = [LocalCopy("default", "c1", "u-c1"), LocalCopy("default", "p1", "u-p1")]
    assert copies_to_drop(state, "m1", copies) == [copies[0]]
    assert copies_to_drop(state, "m2", copies) == [copies[1]]  # p1 lives on m1


def test_copies_the_state_does_not_know_or_that_belong_here_are_kept() -> None:
    state = moved_away()
    kept: list[Any] = [
        LocalCopy("default", "new", "u-unknown"),  # a uid the state does not know
        LocalCopy("default", "ghost"),  # no owner file, no record of that name
        LocalCopy("default", "p1", "u-c1"),  # c1's old copy, but p1 lives here now
    ]
    assert copies_to_drop(state, "m1", kept) == []
    # without an owner file, by name: c1's record lives on m2
    assert copies_to_drop(state, "m1", [LocalCopy("", "c1")]) == [LocalCopy("", "c1")]


def test_a_copy_being_moved_here_or_held_by_an_intent_is_kept() -> None:
    state = moved_away()
    inst = state.instances["c1"]
    inst.moving_to = "m1"
    assert copies_to_drop(state, "m1", [LocalCopy("default", "c1", "u-c1")]) == []
    inst.moving_to, inst.intent = "", "move-1"
    assert copies_to_drop(state, "m1", [LocalCopy("default", "c1", "u-c1")]) == []


def test_replicas_no_longer_held_here_are_dropped() -> None:
    state = cluster()
    ha_running(state)
    ha_running(state, "c2")
    holders(state, "c1", "m2")
    holders(state, "c2", "m3")
    held = {"default": ["u-c1", "u-c2", "u-gone"]}
    assert replicas_to_drop(state, "m2", held) == [("default", "u-c2"), ("default", "u-gone")]
    assert replicas_to_drop(state, "m1", held) == [("default", "u-gone")]  # its own: kept
