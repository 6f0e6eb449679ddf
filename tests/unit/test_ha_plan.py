"""The HA controller's plan over plain state: holders kept, filled and replaced, failover
only from an OFFLINE member to a fresh holder of the current epoch, the lag gate, and a
waiting reason when nothing fits. Plans carried out through apply converge (a second
plan is empty)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.controllers.ha_plan import Failover, Holders, Waiting, concerned, plan_ha
from cluster.state.apply import apply
from cluster.state.model import State
from tests.unit.test_apply_ha import cluster, cmd, controller, ha_running, synced


def carry_out(state: State, steps: list[Any], epoch: int) -> None:
    for step in steps:
        if isinstance(step, Holders):
            result = apply(state, cmd("instance.ha_replicas", uid=step.uid,
                                      members=list(step.members), epoch=epoch))
        elif isinstance(step, Failover):
            result = apply(state, cmd("instance.failover", uid=step.uid, name=step.name,
                                      target=step.target,
                                      placement_epoch=step.placement_epoch, epoch=epoch,
                                      lag=step.lag))
        else:
            result = apply(state, cmd("instance.ha_waiting", uid=step.uid,
                                      reason=step.reason, epoch=epoch))
        assert result.ok, result.error


def offline(state: State, name: str) -> None:
    state.members[name].liveness = "OFFLINE"


def test_holders_are_chosen_then_left_alone() -> None:
    state = cluster()
    ha_running(state, **{"cluster.ha.replicas": "2"})
    epoch = controller(state)
    steps = plan_ha(state, 100.0)
    assert steps == [Holders("u-c1", ("m2", "m3"))] or steps == [Holders("u-c1", ("m3", "m2"))]
    carry_out(state, steps, epoch)
    assert plan_ha(state, 100.0) == []


def test_an_offline_holder_is_replaced_only_when_another_can_hold() -> None:
    state = cluster(4)
    ha_running(state)
    epoch = controller(state)
    carry_out(state, plan_ha(state, 100.0), epoch)
    holder = next(iter(state.instances["c1"].replicas or {}))
    offline(state, holder)
    steps = plan_ha(state, 100.0)
    assert len(steps) == 1 and isinstance(steps[0], Holders)
    assert holder not in steps[0].members and len(steps[0].members) == 1
    for name in state.members:  # nobody else online: the offline holder is kept
        if name not in ("m1", holder):
            offline(state, name)
    assert plan_ha(state, 100.0) == []


def test_non_ha_instances_lose_their_holders_and_waiting() -> None:
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    carry_out(state, plan_ha(state, 100.0), epoch)
    state.instances["c1"].config["cluster.ha"] = "none"
    state.instances["c1"].ha_waiting = "old reason"
    assert plan_ha(state, 100.0) == [Holders("u-c1", ()), Waiting("u-c1", "")]
    carry_out(state, plan_ha(state, 100.0), epoch)
    assert concerned(state) == [] and plan_ha(state, 100.0) == []


def test_failover_goes_to_a_fresh_holder_of_the_current_epoch() -> None:
    state = cluster()
    ha_running(state, **{"cluster.ha.replicas": "2"})
    epoch = controller(state)
    carry_out(state, [Holders("u-c1", ("m2", "m3"))], epoch)
    synced(state, "c1", "m3", 90.0, snapshot="r90")
    offline(state, "m1")
    steps = plan_ha(state, 100.0)
    assert steps == [Failover("u-c1", "c1", "m3", 0, 10.0)]
    carry_out(state, steps, epoch)
    inst = state.instances["c1"]
    assert (inst.location, inst.epoch) == ("m3", 1)
    # the remaining holder's replica is of epoch 0: never promoted after the failover
    offline(state, "m3")
    steps = plan_ha(state, 200.0)
    assert steps == [Waiting("u-c1", "Failover from m3 waits: no ONLINE member holds a "
                                     "complete replica")]


def test_no_replica_means_waiting_until_one_appears() -> None:
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    carry_out(state, [Holders("u-c1", ("m2",))], epoch)
    offline(state, "m1")
    steps = plan_ha(state, 100.0)
    assert len(steps) == 1 and isinstance(steps[0], Waiting)
    carry_out(state, steps, epoch)
    assert state.instances["c1"].ha_waiting.startswith("Failover from m1 waits")
    assert state.instances["c1"].location == "m1"


def test_the_lag_gate_refuses_old_replicas() -> None:
    state = cluster()
    ha_running(state, **{"cluster.ha.max_lag": "30"})
    epoch = controller(state)
    carry_out(state, [Holders("u-c1", ("m2",))], epoch)
    synced(state, "c1", "m2", 50.0)
    offline(state, "m1")
    steps = plan_ha(state, 100.0)
    assert steps == [Waiting("u-c1", "Failover from m1 waits: every replica is older than "
                                     "cluster.ha.max_lag=30s: m2 (50.0s old)")]
    assert plan_ha(state, 75.0) == [Failover("u-c1", "c1", "m2", 0, 25.0)]


def test_without_a_gate_an_old_replica_is_promoted_and_its_age_kept() -> None:
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    carry_out(state, [Holders("u-c1", ("m2",))], epoch)
    synced(state, "c1", "m2", 50.0)
    offline(state, "m1")
    carry_out(state, plan_ha(state, 1000.0), epoch)
    failover = state.instances["c1"].failover
    assert failover is not None and failover["lag"] == 950.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["m1", "m2", "m3", "m4"]), st.booleans()),
                max_size=6), st.integers(1, 3))
def test_plans_converge_and_never_place_on_the_instance_member(
        flips: list[tuple[str, bool]], replicas: int) -> None:
    state = cluster(4)
    ha_running(state, **{"cluster.ha.replicas": str(replicas)})
    epoch = controller(state)
    for member, down in flips:
        state.members[member].liveness = "OFFLINE" if down else "ONLINE"
        for _ in range(3):
            steps = plan_ha(state, 100.0)
            carry_out(state, steps, epoch)
            inst = state.instances["c1"]
            assert inst.location not in (inst.replicas or {})
        assert all(isinstance(s, Waiting) for s in plan_ha(state, 100.0)) or \
            plan_ha(state, 100.0) == []
