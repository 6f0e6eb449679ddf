"""Building the scheduler's view from the replicated state, and the scheduler's keys."""

from __future__ import annotations

import pytest

from cluster.state import reservations
from cluster.state.cluster_view import view_from_state
from cluster.state.model import Instance, Member, Profile, State
from corral_shared.resources import DEFAULTS, AllocationRatios, GiB, MiB, Resources
from scheduler import keys
from scheduler.view import PlacementGroupView

NOW = 1000.0
CAPACITY = {"cpu": 16, "memory": 64 * GiB, "disk": 1000 * GiB}
ROOT = {"root": {"type": "disk", "path": "/", "pool": "default"}}


def state_with(*members: Member) -> State:
    """A state whose instances the tests insert directly: its reservation totals are
    left to be recomputed from them when first read."""
    state = State(reserved=None)
    for m in members:
        state.members[m.name] = m
    return state


def online(name: str, **fields: object) -> Member:
    values: dict[str, object] = {"heartbeat_at": NOW, "capacity": dict(CAPACITY), **fields}
    return Member(name=name, address=f"{name}:8443", **values)  # type: ignore[arg-type]


def instance(name: str, location: str, config: dict[str, str] | None = None,
             profiles: list[str] | None = None, type: str = "container") -> Instance:
    return Instance(uid=name, name=name, type=type, location=location,
                    architecture="x86_64", image="img", created_at=0.0,
                    config=config or {}, devices=dict(ROOT), profiles=profiles or [])


def test_member_status_is_the_committed_liveness_and_evacuation_overrides() -> None:
    # Heartbeat stamps (the sender's clock) play no part: only the leader's verdict.
    state = state_with(online("m1", heartbeat_at=NOW - 600), online("m2", liveness="OFFLINE"),
                       online("m3", state="EVACUATED"),
                       online("m4", state="EVACUATED", liveness="OFFLINE"))
    view = view_from_state(state)
    assert {n: m.status for n, m in view.members.items()} == {
        "m1": "ONLINE", "m2": "OFFLINE", "m3": "EVACUATED", "m4": "EVACUATED"}


def test_member_attributes_are_carried_over() -> None:
    state = state_with(online("m1", architecture="aarch64", groups=["rack1"],
                              instance_types=["container", "virtual-machine"],
                              config={"scheduler.instance": "manual"}))
    m = view_from_state(state).members["m1"]
    assert m.architecture == "aarch64"
    assert m.groups == frozenset({"rack1"})
    assert m.instance_types == frozenset({"container", "virtual-machine"})
    assert m.mode == "manual"
    # Schedulable capacity: 16 cores at the default CPU allocation ratio (16), memory and
    # disk as reported (memory ratio 1; disk is never overcommitted).
    assert m.capacity == Resources(16 * 16, 64 * GiB, 1000 * GiB)
    assert m.unknown == ()


def test_an_invalid_scheduler_mode_counts_as_all() -> None:
    state = state_with(online("m1", config={"scheduler.instance": "sometimes"}))
    assert view_from_state(state).members["m1"].mode == "all"


def test_capacity_overrides_replace_what_the_agent_reports() -> None:
    state = state_with(online("m1", config={"scheduler.capacity.cpu": "8",
                                            "scheduler.capacity.memory": "32GiB",
                                            "scheduler.capacity.disk": "500GiB"}),
                       online("m2", config={"scheduler.capacity.memory": "50%"}),
                       online("m3", config={"scheduler.capacity.cpu": "lots"}))
    state.config[keys.CPU_RATIO_KEY] = "1"  # capacities exactly as set or reported
    members = view_from_state(state).members
    assert members["m1"].capacity == Resources(8, 32 * GiB, 500 * GiB)
    assert members["m2"].capacity.memory == 32 * GiB
    assert members["m3"].capacity.cpu == 16  # an invalid override is ignored


def test_allocation_ratios_scale_cpu_and_memory_but_never_disk() -> None:
    state = state_with(online("m1"), online("m2", config={"scheduler.capacity.cpu": "2"}))
    state.config.update({keys.CPU_RATIO_KEY: "4", keys.MEMORY_RATIO_KEY: "1.5"})
    view = view_from_state(state)
    assert view.ratios == AllocationRatios(cpu=4.0, memory=1.5)
    assert view.members["m1"].capacity == Resources(64, 96 * GiB, 1000 * GiB)
    assert view.members["m2"].capacity.cpu == 8  # the override, times the ratio


def test_ratios_default_to_16_for_cpu_and_1_for_memory_and_ignore_bad_values() -> None:
    state = state_with(online("m1"))
    assert view_from_state(state).ratios == AllocationRatios(cpu=16.0, memory=1.0)
    state.config.update({keys.CPU_RATIO_KEY: "-3", keys.MEMORY_RATIO_KEY: "0.1"})
    view = view_from_state(state)  # apply refuses these; an old state falls back
    assert view.ratios == keys.DEFAULT_RATIOS
    assert view.members["m1"].capacity == Resources(256, 64 * GiB, 1000 * GiB)


def test_ratio_1_leaves_capacity_exactly_as_reported() -> None:
    state = state_with(online("m1", capacity={"cpu": 3, "memory": 2**40 + 12345,
                                              "disk": 7 * GiB}))
    state.config.update({keys.CPU_RATIO_KEY: "1", keys.MEMORY_RATIO_KEY: "1.0"})
    assert view_from_state(state).members["m1"].capacity == Resources(
        3, 2**40 + 12345, 7 * GiB)


def test_unreported_capacity_is_unknown_unless_configured() -> None:
    state = state_with(online("m1", capacity={"cpu": 4}),
                       online("m2", capacity={}, config={"scheduler.capacity.cpu": "4",
                                                         "scheduler.capacity.memory": "8GiB",
                                                         "scheduler.capacity.disk": "1TiB"}))
    members = view_from_state(state).members
    assert members["m1"].unknown == ("memory", "disk")
    assert members["m2"].unknown == ()


def test_reservations_sum_the_demands_of_the_instances_on_each_member() -> None:
    state = state_with(online("m1"), online("m2"))
    state.profiles["big"] = Profile("big", config={"limits.memory": "4GiB",
                                                   "limits.cpu": "2"})
    state.instances["a"] = instance("a", "m1")
    state.instances["b"] = instance("b", "m1", profiles=["big"])
    state.instances["c"] = instance("c", "m2", config={"limits.cpu": "0-3"},
                                    type="virtual-machine")
    reserved = reservations.totals(state)
    assert reserved["m1"] == Resources(0 + 2, 64 * MiB + 4 * GiB, 2 * 256 * MiB)
    assert reserved["m2"] == Resources(4, 1 * GiB, 10 * GiB)
    view = view_from_state(state)
    assert view.members["m1"].reserved == reserved["m1"]
    assert view.members["m1"].instances == 2 and view.members["m2"].instances == 1


def test_a_moving_instance_counts_on_both_ends() -> None:
    state = state_with(online("m1"), online("m2"))
    state.config["placement.group.web.policy"] = "spread"
    state.instances["a"] = instance("a", "m1", config={"placement.group": "web"})
    state.instances["a"].moving_to = "m2"
    reserved = reservations.totals(state)
    assert reserved["m1"] == reserved["m2"] == DEFAULTS["container"]
    view = view_from_state(state)
    assert view.members["m2"].instances == 1
    assert view.placement_groups["web"].members == {"m1": 1, "m2": 1}


def test_an_unreadable_limit_in_the_state_counts_as_the_default() -> None:
    state = state_with(online("m1"))
    state.instances["a"] = instance("a", "m1", config={"limits.cpu": "garbage"})
    assert reservations.totals(state)["m1"] == DEFAULTS["container"]


def test_precomputed_reservations_and_a_member_subset() -> None:
    state = state_with(online("m1"), online("m2"))
    state.instances["a"] = instance("a", "m1")
    view = view_from_state(state, reserved={"m1": Resources(3, 0, 0)},
                           instances={"m1": 7}, members=["m1", "gone"],
                           placement_groups={})
    assert list(view.members) == ["m1"]
    assert view.members["m1"].reserved == Resources(3, 0, 0)
    assert view.members["m1"].instances == 7


def test_cluster_policy_defaults_to_spread() -> None:
    state = state_with(online("m1"))
    assert view_from_state(state).policy == "spread"
    state.config["cluster.scheduler.policy"] = "binpack"
    assert view_from_state(state).policy == "binpack"
    state.config["cluster.scheduler.policy"] = "random"
    assert view_from_state(state).policy == "spread"


def test_placement_groups_come_from_config_and_instances() -> None:
    state = state_with(online("m1"), online("m2"))
    state.config.update({"placement.group.web.policy": "spread",
                         "placement.group.web.rigor": "permissive",
                         "placement.group.db.policy": "compact",
                         "placement.group.bad.policy": "scatter"})
    state.profiles["webp"] = Profile("webp", config={"placement.group": "web"})
    state.instances["a"] = instance("a", "m1", profiles=["webp"])
    state.instances["b"] = instance("b", "m2", config={"placement.group": "web"})
    state.instances["c"] = instance("c", "m2", config={"placement.group": "web"})
    state.instances["d"] = instance("d", "m2", config={"placement.group": "orphan"})
    groups = view_from_state(state).placement_groups
    assert groups["web"] == PlacementGroupView("web", "spread", "permissive",
                                               {"m1": 1, "m2": 2})
    assert groups["db"] == PlacementGroupView("db", "compact", "strict", {})
    assert groups["bad"].policy == ""  # not a valid policy: the group is undefined
    assert groups["orphan"].policy == "" and groups["orphan"].members == {"m2": 1}


def test_commit_and_release_keep_counts_in_step() -> None:
    state = state_with(online("m1"))
    state.config["placement.group.web.policy"] = "spread"
    view = view_from_state(state)
    demand = Resources(2, GiB, GiB)
    view.commit("m1", demand, "web")
    assert view.members["m1"].reserved == demand and view.members["m1"].instances == 1
    assert view.placement_groups["web"].members == {"m1": 1}
    view.release("m1", demand, "web")
    assert view.members["m1"].reserved == Resources(0, 0, 0)
    assert view.placement_groups["web"].members == {}


def test_copy_is_independent() -> None:
    state = state_with(online("m1"))
    view = view_from_state(state)
    other = view.copy()
    other.commit("m1", Resources(1, 1, 1), "g")
    assert view.members["m1"].instances == 0 and "g" not in view.placement_groups


@pytest.mark.parametrize(("key", "value", "ok"), [
    ("scheduler.instance", "all", True), ("scheduler.instance", "group", True),
    ("scheduler.instance", "never", False), ("scheduler.capacity.cpu", "12", True),
    ("scheduler.capacity.cpu", "0", False), ("scheduler.capacity.memory", "64GiB", True),
    ("scheduler.capacity.memory", "80%", True), ("scheduler.capacity.memory", "x", False),
    ("scheduler.capacity.gpu", "1", False), ("scheduler.capacity.disk", "", True),
    ("user.note", "anything", True),
])
def test_member_config_validation(key: str, value: str, ok: bool) -> None:
    assert (keys.member_config_error(key, value) == "") is ok


@pytest.mark.parametrize(("key", "value", "ok"), [
    ("cluster.scheduler.policy", "binpack", True), ("cluster.scheduler.policy", "", True),
    ("cluster.scheduler.policy", "random", False),
    ("placement.group.web.policy", "compact", True),
    ("placement.group.web.rigor", "permissive", True),
    ("placement.group.web.rigor", "loose", False),
    ("placement.group.web.colour", "red", False), ("placement.group.policy", "spread", False),
    ("core.https_address", ":8443", True),
    ("scheduler.cpu_allocation_ratio", "4", True),
    ("scheduler.cpu_allocation_ratio", "0.5", True),
    ("scheduler.cpu_allocation_ratio", "", True),
    ("scheduler.cpu_allocation_ratio", "0", False),
    ("scheduler.cpu_allocation_ratio", "-1", False),
    ("scheduler.cpu_allocation_ratio", "inf", False),
    ("scheduler.cpu_allocation_ratio", "nan", False),
    ("scheduler.cpu_allocation_ratio", "lots", False),
    ("scheduler.memory_allocation_ratio", "1.5", True),
    ("scheduler.memory_allocation_ratio", "0.5", True),
    ("scheduler.memory_allocation_ratio", "0.49", False),
    ("scheduler.memory_allocation_ratio", "0", False),
    ("scheduler.cpu_allocation_rate", "4", False),  # misspelt: refused, not ignored
    ("scheduler.instance", "manual", False),  # a member key, not a cluster one
])
def test_cluster_config_validation(key: str, value: str, ok: bool) -> None:
    assert (keys.cluster_config_error(key, value) == "") is ok


def test_a_bad_ratio_is_refused_with_a_message_naming_the_key_and_the_rule() -> None:
    assert keys.cluster_config_error("scheduler.cpu_allocation_ratio", "0") == (
        "scheduler.cpu_allocation_ratio must be a positive number (default 16), got '0'")
    assert keys.cluster_config_error("scheduler.memory_allocation_ratio", "0.1") == (
        "scheduler.memory_allocation_ratio must be a number of at least 0.5 (default 1), "
        "got '0.1'")
