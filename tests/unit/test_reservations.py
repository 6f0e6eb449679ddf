"""The running per-member totals of reserved resources always equal a fresh sum."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.state import reservations
from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.model import State
from corral_shared.resources import GiB, MiB, Resources
from scheduler import keys

FP = "b" * 64
FP_VM = "c" * 64
_ids = itertools.count()


def cmd(type_: str, **args: Any) -> Command:
    return Command(id=f"r{next(_ids)}", type=type_, args=args, time=1.0)


def two_members() -> State:
    state = State()
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "capacity": {
        "cpu": 8, "memory": 16 * GiB, "disk": 100 * GiB}},
        pool={"name": "default", "driver": "dir"}, network={"name": "br0"})).ok
    apply(state, cmd("join_token.add", name="m2", secret_hash="h", expires_at=10.0))
    assert apply(state, cmd("member.join", name="m2", secret_hash="h", address="m2:8443",
                            raft_address="m2:8444",
                            capacity={"cpu": 4, "memory": 4 * GiB, "disk": 10 * GiB})).ok
    assert apply(state, cmd("image.add", fingerprint=FP, info={"type": "container"},
                            member="m1")).ok
    assert apply(state, cmd("profile.create", name="big",
                            config={"limits.memory": "2GiB"})).ok
    groups = {"placement.group.web.policy": "spread", "placement.group.web.rigor": "permissive",
              "placement.group.db.policy": "compact", "placement.group.db.rigor": "permissive"}
    assert apply(state, cmd("config.set", config={**state.config, **groups})).ok
    return state


def fresh_totals(state: State) -> dict[str, Resources]:
    return fresh(state).reserved or {}


def fresh(state: State) -> State:
    copy: State = pickle.loads(pickle.dumps(state))
    reservations.recompute(copy)
    return copy


def test_create_counts_limits_profiles_and_defaults() -> None:
    state = two_members()
    assert apply(state, cmd("instance.create", uid="u1", name="c1", location="m1", image=FP,
                            profiles=["default"], config={"limits.cpu": "0-3"})).ok
    assert apply(state, cmd("instance.create", uid="u2", name="c2", location="m1", image=FP,
                            profiles=["default", "big"])).ok
    assert reservations.reserved(state, "m1") == Resources(
        cpu=4 + 0, memory=64 * MiB + 2 * GiB, disk=512 * MiB)
    assert reservations.reserved(state, "m2") == Resources()


def test_capacity_is_taken_from_bootstrap_and_heartbeats() -> None:
    state = two_members()
    assert state.members["m1"].capacity == {"cpu": 8.0, "memory": 16.0 * GiB,
                                            "disk": 100.0 * GiB}
    apply(state, cmd("member.heartbeat", name="m2",
                     capacity={"cpu": 2, "memory": -1, "disk": "x"}))
    assert state.members["m2"].capacity == {"cpu": 2.0}  # malformed parts are dropped


def test_apply_refuses_a_create_or_a_growth_that_no_longer_fits() -> None:
    state = two_members()  # m2: 4 CPUs, 4 GiB
    ok = apply(state, cmd("instance.create", uid="u1", name="c1", location="m2", image=FP,
                          profiles=["default"], config={"limits.memory": "3GiB"}))
    assert ok.ok
    late = apply(state, cmd("instance.create", uid="u2", name="c2", location="m2", image=FP,
                            profiles=["default"], config={"limits.memory": "2GiB"}))
    assert late.code == 409 and "memory" in late.error and "c2" not in state.instances
    grow = apply(state, cmd("instance.update", name="c1", config={"limits.memory": "5GiB"},
                            devices={}, profiles=["default"]))
    assert grow.code == 400 and "only 4 GiB memory free for 5 GiB" in grow.error, grow.error
    assert state.instances["c1"].config["limits.memory"] == "3GiB"


def test_an_old_snapshot_without_totals_gets_them_recomputed() -> None:
    state = two_members()
    apply(state, cmd("instance.create", uid="u1", name="c1", location="m2", image=FP,
                     profiles=["default", "big"]))
    assert apply(state, cmd("instance.create", uid="u2", name="c2", location="m1", image=FP,
                            profiles=["default"], config={"placement.group": "web"})).ok
    data = state.__dict__.copy()
    del data["reserved"], data["grouped"]
    old = State.__new__(State)
    old.__setstate__(data)
    assert old.reserved is None and old.grouped is None
    assert reservations.reserved(old, "m2").memory == 2 * GiB
    assert reservations.group_members(old, "web") == {"m1": 1}


OPS = st.lists(st.tuples(
    st.sampled_from(["create", "update", "delete", "deleted", "profile", "create-failed"]),
    st.integers(0, 5), st.sampled_from(["m1", "m2"]),
    st.sampled_from(["", "1", "3", "0-1"]), st.sampled_from(["", "256MiB", "3GiB"]),
    st.sampled_from(["", "web", "db"])),
    max_size=40)


@settings(max_examples=150, deadline=None)
@given(OPS, st.sampled_from(["1", "1.5", "16"]), st.sampled_from(["1", "1.5"]))
def test_totals_equal_a_fresh_sum_after_any_commands(ops: list[tuple[Any, ...]],
                                                     cpu_ratio: str, memory_ratio: str) -> None:
    state = two_members()
    assert apply(state, cmd("config.set", config={
        **state.config, keys.CPU_RATIO_KEY: cpu_ratio, keys.MEMORY_RATIO_KEY: memory_ratio})).ok
    for kind, n, member, cpu, memory, group in ops:
        name, config = f"c{n}", {k: v for k, v in (("limits.cpu", cpu),
                                                   ("limits.memory", memory),
                                                   ("placement.group", group)) if v}
        inst = state.instances.get(name)
        if kind == "create":
            apply(state, cmd("instance.create", uid=f"u{next(_ids)}", name=name,
                             location=member, image=FP, profiles=["default", "big"][:n % 3],
                             config=config))
        elif kind == "update" and inst is not None:
            apply(state, cmd("instance.update", name=name, config=config,
                             devices=inst.devices, profiles=inst.profiles))
        elif kind == "delete" and inst is not None:
            apply(state, cmd("instance.delete", name=name, force=True))
        elif kind == "deleted" and inst is not None and inst.power == "Deleted":
            apply(state, cmd("instance.observed", uid=inst.uid, generation=inst.generation,
                             status="Stopped"))
        elif kind == "create-failed" and inst is not None and not inst.observed.created:
            apply(state, cmd("instance.observed", uid=inst.uid, generation=1,
                             status="Stopped", error="boom", created=False))
        elif kind == "profile":
            apply(state, cmd("profile.update", name="big", config=config, devices={}))
        again = fresh(state)
        assert (state.reserved, state.grouped) == (again.reserved, again.grouped)
        for member in ("m1", "m2"):  # apply never commits a member past capacity × ratio
            capacity = state.members[member].capacity
            held = reservations.reserved(state, member)
            assert held.cpu <= capacity["cpu"] * float(cpu_ratio)
            assert held.memory <= int(capacity["memory"] * float(memory_ratio))


def _create(state: State, name: str, member: str, cpu: str, kind: str = "container") -> Any:
    return apply(state, cmd("instance.create", uid=f"u-{name}", name=name, location=member,
                            image=FP if kind == "container" else FP_VM, type=kind,
                            profiles=["default"], config={"limits.cpu": cpu}))


def test_apply_places_cpu_up_to_cores_times_the_ratio_and_refuses_past_it() -> None:
    state = two_members()  # m2: 4 CPUs -> 6 schedulable at ratio 1.5
    assert apply(state, cmd("config.set", config={**state.config,
                                                  keys.CPU_RATIO_KEY: "1.5"})).ok
    assert _create(state, "c1", "m2", "4").ok
    assert _create(state, "c2", "m2", "2").ok
    late = _create(state, "c3", "m2", "1")
    assert late.code == 409 and "c3" not in state.instances
    assert ("has 0 CPUs free, needs 1 CPU (4 CPUs × scheduler.cpu_allocation_ratio 1.5 "
            "= 6 CPUs schedulable)") in late.error, late.error
    grow = apply(state, cmd("instance.update", name="c2", config={"limits.cpu": "3"},
                            devices={}, profiles=["default"]))
    assert grow.code == 400 and "only 2 CPUs cpu free for 3 CPUs" in grow.error, grow.error
    assert reservations.reserved(state, "m2").cpu == 6


def test_apply_at_ratio_1_refuses_what_the_cores_cannot_hold_as_before() -> None:
    state = two_members()
    assert apply(state, cmd("config.set", config={**state.config,
                                                  keys.CPU_RATIO_KEY: "1"})).ok
    assert _create(state, "c1", "m2", "4").ok
    late = _create(state, "c2", "m2", "1")
    assert late.code == 409 and "has 0 CPUs free, needs 1 CPU" in late.error
    assert "ratio" not in late.error  # at ratio 1 the capacity is just the cores


def test_apply_overcommits_memory_only_by_the_memory_ratio() -> None:
    state = two_members()  # m2: 4 GiB -> 6 GiB schedulable at ratio 1.5
    assert apply(state, cmd("config.set", config={**state.config,
                                                  keys.MEMORY_RATIO_KEY: "1.5"})).ok
    big = {"limits.memory": "5GiB"}
    assert apply(state, cmd("instance.create", uid="u1", name="c1", location="m2", image=FP,
                            profiles=["default"], config=big)).ok
    late = apply(state, cmd("instance.create", uid="u2", name="c2", location="m2", image=FP,
                            profiles=["default"], config={"limits.memory": "2GiB"}))
    assert late.code == 409 and "free memory" in late.error
    assert "scheduler.memory_allocation_ratio 1.5" in late.error


def test_the_issue_scenario_two_cpu_1_containers_then_a_vm_on_2_cores() -> None:
    state = two_members()
    assert apply(state, cmd("member.heartbeat", name="m2", instance_types=[
        "container", "virtual-machine"], capacity={"cpu": 2, "memory": 4 * GiB,
                                                  "disk": 20 * GiB})).ok
    assert apply(state, cmd("image.add", fingerprint=FP_VM, info={"type": "virtual-machine"},
                            member="m1")).ok
    assert _create(state, "c1", "m2", "1").ok and _create(state, "c2", "m2", "1").ok
    strict = fresh(state)  # the same cluster at ratio 1 refuses it, as corral did before
    assert apply(strict, cmd("config.set", config={**strict.config,
                                                   keys.CPU_RATIO_KEY: "1"})).ok
    refused = _create(strict, "v1", "m2", "1", kind="virtual-machine")
    assert "member m2 has 0 CPUs free, needs 1 CPU" in refused.error, refused.error
    assert _create(state, "v1", "m2", "1", kind="virtual-machine").ok  # default ratio 16


def test_config_set_refuses_a_bad_ratio_and_changes_nothing() -> None:
    state = two_members()
    before = dict(state.config)
    for key, value in ((keys.CPU_RATIO_KEY, "0"), (keys.CPU_RATIO_KEY, "x"),
                       (keys.MEMORY_RATIO_KEY, "0.2")):
        result = apply(state, cmd("config.set", config={**before, key: value}))
        assert result.code == 400 and key in result.error, result.error
        assert state.config == before
