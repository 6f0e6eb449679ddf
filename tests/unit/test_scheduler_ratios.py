"""Allocation ratios (``scheduler.cpu_allocation_ratio``, ``.memory_allocation_ratio``):
placement and apply's re-check may commit a member up to its capacity times the ratio,
never further; at ratio 1 placement is what it was before ratios existed.

The bounds are restated here from the members' reported capacity, independently of
``AllocationRatios.schedulable``.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.state.apply import apply
from cluster.state.cluster_view import capacity_of, view_from_state
from cluster.state.commands import Command
from cluster.state.model import Member, State
from corral_shared.resources import NO_OVERCOMMIT, AllocationRatios, GiB, MiB, Resources
from scheduler import keys
from scheduler.pipeline import place, recheck
from scheduler.plan import explain_json, explain_text
from scheduler.request import PlacementRequest
from scheduler.testing import Harness, member, request, view
from scheduler.view import ClusterView

NOW = 1000.0
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
CPU_RATIOS = st.one_of(st.sampled_from([1.0, 1.5, 2.0, 16.0]), st.floats(0.1, 64.0))
MEMORY_RATIOS = st.one_of(st.sampled_from([1.0, 1.5]), st.floats(keys.MIN_MEMORY_RATIO, 4.0))


def random_state(rnd: random.Random, cpu_ratio: float | None,
                 memory_ratio: float | None) -> State:
    """Members with small capacities (exact fits are common); the ratios in the cluster
    config as a user would type them (None: unset, the default)."""
    state = State(reserved=None)
    for i in range(rnd.randint(1, 6)):
        name = f"m{i}"
        state.members[name] = Member(
            name=name, address=f"{name}:8443", heartbeat_at=NOW,
            instance_types=["container", "virtual-machine"],
            capacity={"cpu": float(rnd.randint(1, 8)),
                      "memory": float(rnd.randint(1, 16) * 256 * MiB),
                      "disk": float(rnd.randint(1, 40) * GiB)})
    if cpu_ratio is not None:
        state.config[keys.CPU_RATIO_KEY] = repr(cpu_ratio)
    if memory_ratio is not None:
        state.config[keys.MEMORY_RATIO_KEY] = repr(memory_ratio)
    return state


def random_requests(rnd: random.Random, count: int) -> list[PlacementRequest]:
    return [PlacementRequest(f"r{i}-{rnd.randrange(10**6)}", f"i{i}",
                             rnd.choice(("container", "virtual-machine")), "x86_64",
                             Resources(rnd.randint(0, 3), rnd.randint(0, 6) * 128 * MiB,
                                       rnd.randint(0, 4) * GiB))
            for i in range(count)]


def bounds(state: State) -> dict[str, tuple[float, float, float]]:
    """Each member's limit per dimension: cores x cpu ratio, memory x memory ratio
    (whole bytes), disk as reported."""
    cpu = float(state.config.get(keys.CPU_RATIO_KEY, "16"))
    memory = float(state.config.get(keys.MEMORY_RATIO_KEY, "1"))
    return {name: (m.capacity["cpu"] * cpu, int(m.capacity["memory"] * memory),
                   m.capacity["disk"]) for name, m in state.members.items()}


@SETTINGS
@given(st.integers(0, 2**32), st.one_of(st.none(), CPU_RATIOS),
       st.one_of(st.none(), MEMORY_RATIOS))
def test_placement_never_commits_a_member_past_capacity_times_the_ratio(
        seed: int, cpu_ratio: float | None, memory_ratio: float | None) -> None:
    rnd = random.Random(seed)
    state = random_state(rnd, cpu_ratio, memory_ratio)
    harness = Harness(view_from_state(state))
    for r in random_requests(rnd, 40):
        harness.place(r)
    limit = bounds(state)
    for name, m in harness.view.members.items():
        cpu, memory, disk = limit[name]
        assert m.reserved.cpu <= cpu and m.reserved.memory <= memory and m.reserved.disk <= disk


@SETTINGS
@given(st.integers(0, 2**32), CPU_RATIOS, MEMORY_RATIOS)
def test_a_member_is_refused_only_when_the_demand_exceeds_its_ratio_bound(
        seed: int, cpu_ratio: float, memory_ratio: float) -> None:
    """The ratio is used to the full: recheck refuses for room exactly when the demand
    would pass capacity x ratio in cpu or memory (or the disk)."""
    rnd = random.Random(seed)
    state = random_state(rnd, cpu_ratio, memory_ratio)
    cluster = view_from_state(state)
    limit = bounds(state)
    for r in random_requests(rnd, 20):
        for name, m in cluster.members.items():
            after = m.reserved + r.demand
            cpu, memory, disk = limit[name]
            fits = after.cpu <= cpu and after.memory <= memory and after.disk <= disk
            assert (recheck(cluster, r, name) == "") is fits, (name, r.demand, limit[name])
            if fits and rnd.random() < 0.5:
                cluster.commit(name, r.demand)


@SETTINGS
@given(st.integers(0, 2**32), st.sampled_from(["1", "1.0"]))
def test_at_ratio_1_placement_is_what_it_was_without_ratios(seed: int, one: str) -> None:
    """Ratios 1 give the capacities exactly as reported, and the same plans (member,
    error) as a view of the raw capacities."""
    rnd = random.Random(seed)
    state = random_state(rnd, None, None)
    state.config.update({keys.CPU_RATIO_KEY: one, keys.MEMORY_RATIO_KEY: one})
    ratioed = view_from_state(state)
    raw = view_from_state(state)
    for name, m in raw.members.items():
        m.capacity = capacity_of(state.members[name])[0]
        assert ratioed.members[name].capacity == m.capacity
    raw.ratios = NO_OVERCOMMIT
    for r in random_requests(rnd, 30):
        a, b = place(ratioed, r), place(raw, r)
        assert (a.member, a.error) == (b.member, b.error)
        if a.member is not None:
            ratioed.commit(a.member, r.demand)
            raw.commit(a.member, r.demand)


@SETTINGS
@given(st.integers(0, 2**32), CPU_RATIOS, CPU_RATIOS)
def test_a_higher_cpu_ratio_never_refuses_what_a_lower_one_takes(
        seed: int, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    rnd = random.Random(seed)
    state = random_state(rnd, low, None)
    at_low = view_from_state(state)
    state.config[keys.CPU_RATIO_KEY] = repr(high)
    at_high = view_from_state(state)
    for r in random_requests(rnd, 10):
        for name in at_low.members:
            if recheck(at_low, r, name) == "":
                assert recheck(at_high, r, name) == ""


# -- through apply -------------------------------------------------------------------------

FP = "d" * 64
_ids = itertools.count()


def cmd(type_: str, **args: Any) -> Command:
    return Command(id=f"ratio-{next(_ids)}", type=type_, args=args, time=NOW)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.25, 8.0), st.lists(st.integers(1, 4), max_size=30))
def test_apply_fills_a_member_up_to_cores_times_the_ratio_and_no_further(
        ratio: float, cpus: list[int]) -> None:
    state = State()
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "capacity": {
        "cpu": 3, "memory": 1024 * GiB, "disk": 1024 * GiB}},
        pool={"name": "default", "driver": "dir"}, network={"name": "br0"})).ok
    assert apply(state, cmd("image.add", fingerprint=FP, info={"type": "container"},
                            member="m1")).ok
    assert apply(state, cmd("config.set", config={keys.CPU_RATIO_KEY: repr(ratio)})).ok
    held = 0
    for i, cpu in enumerate(cpus):
        result = apply(state, cmd("instance.create", uid=f"u{i}", name=f"c{i}",
                                  location="m1", image=FP, profiles=["default"],
                                  config={"limits.cpu": str(cpu)}))
        fits = held + cpu <= 3 * ratio
        assert result.ok is fits, (held, cpu, ratio, result.error)
        if fits:
            held += cpu
        else:
            assert result.code == 409 and "CPU" in result.error
    assert sum(i.demand.cpu for i in state.instances.values()) == held <= 3 * ratio


# -- messages and explanations -------------------------------------------------------------

def test_a_refusal_names_the_ratio_that_made_the_schedulable_amount() -> None:
    full = member("vm", cpu=32, reserved=Resources(32, 0, 0))
    v = view(full)
    v.ratios = AllocationRatios(cpu=16.0)
    assert recheck(v, request(cpu=1), "vm") == (
        "member vm has 0 CPUs free, needs 1 CPU "
        "(2 CPUs × scheduler.cpu_allocation_ratio 16 = 32 CPUs schedulable)")
    other = member("m2", cpu=32, reserved=Resources(31.5, 0, 0))
    v.members["m2"] = other
    plan = place(v, request(cpu=1))
    assert plan.error == ("no member has 1 CPU free; largest free: m2 with 0.5 CPUs "
                          "(scheduler.cpu_allocation_ratio 16)")


def test_explanations_show_the_ratios_in_use() -> None:
    v = ClusterView({"m1": member("m1")}, ratios=AllocationRatios(cpu=4.0, memory=1.5))
    plan = place(v, request())
    data = explain_json(plan)
    assert data["allocation_ratios"] == {"cpu": 4.0, "memory": 1.5}
    json.dumps(data)
    assert "allocation ratios cpu 4, memory 1.5" in explain_text(plan)[0]
    assert explain_json(place(view(member("m1")), request()))["allocation_ratios"] == {
        "cpu": 1.0, "memory": 1.0}
