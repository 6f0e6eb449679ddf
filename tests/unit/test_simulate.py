"""The scale simulator: small pure and Raft runs, checked against the final placements.

Demands are recomputed here from each instance's own limits, independently of the
scheduler's accounting, and summed per member against the capacity the member reported
times the cluster's allocation ratios (the simulated clusters keep the defaults: CPU 16,
memory 1).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from cluster.state.model import State
from corral_shared.resources import DEFAULTS, AllocationRatios
from scheduler import keys
from simulator.fake_driver import FakeDriver, SimInstance
from simulator.sim_raft import RaftOptions, run_raft
from simulator.simulate import main, run_pure

UNITS = {"MiB": 2**20, "GiB": 2**30}
CONTAINER = DEFAULTS["container"]


def _bytes(text: str) -> int:
    return int(text[:-3]) * UNITS[text[-3:]]


def _demand(config: dict[str, str], devices: dict[str, dict[str, str]]) -> tuple[int, int, int]:
    """(CPUs, memory bytes, disk bytes) an instance reserves, from its own limits."""
    root = devices.get("root", {})
    return (int(config.get("limits.cpu", CONTAINER.cpu)),
            _bytes(config["limits.memory"]) if "limits.memory" in config else CONTAINER.memory,
            _bytes(root["size"]) if "size" in root else CONTAINER.disk)


def _overcommitted(where: dict[str, str], specs: dict[str, tuple[int, int, int]],
                   capacity: dict[str, dict[str, float]],
                   ratios: AllocationRatios = keys.DEFAULT_RATIOS) -> list[str]:
    """Members holding more than their capacity times ``ratios`` in some dimension."""
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for name, member in where.items():
        for dimension, amount in enumerate(specs[name]):
            used[member][dimension] += amount
    return [m for m, (cpu, memory, disk) in used.items()
            if cpu > capacity[m]["cpu"] * ratios.cpu
            or memory > int(capacity[m]["memory"] * ratios.memory)
            or disk > capacity[m]["disk"]]


def _specs(seed: int, count: int) -> dict[str, SimInstance]:
    return {spec.name: spec for spec in FakeDriver(seed).instances(count)}


def _capacities(seed: int, members: int) -> dict[str, dict[str, float]]:
    return {m.name: m.capacity for m in FakeDriver(seed).members(members)}


def test_fake_driver_is_deterministic_and_in_range() -> None:
    members = FakeDriver(5).members(200)
    assert members == FakeDriver(5).members(200) != FakeDriver(6).members(200)
    for member in members:
        assert 8 <= member.capacity["cpu"] <= 128
        assert 16 * 2**30 <= member.capacity["memory"] <= 512 * 2**30
        assert 200 * 2**30 <= member.capacity["disk"] <= 4 * 2**40
    specs = list(FakeDriver(5).instances(2000))
    assert specs == list(FakeDriver(5).instances(2000))
    assert any(not s.config and not s.devices for s in specs)  # some set no limits
    assert {s.config.get("limits.cpu") for s in specs} >= {"1", "2", "4"}


def test_pure_run_places_every_instance_without_overcommitting() -> None:
    report = run_pure(50, 2000, seed=11, record=True)
    where = report.tally.where
    assert where is not None
    assert report.tally.placed == len(where) == 2000 and not report.tally.refused
    demands = {name: _demand(s.config, s.devices) for name, s in _specs(11, 2000).items()}
    assert not _overcommitted(where, demands, _capacities(11, 50))
    assert report.placements_per_second > 0


def test_pure_run_is_deterministic_for_a_seed() -> None:
    first = run_pure(20, 500, seed=3, record=True).tally.where
    assert first == run_pure(20, 500, seed=3, record=True).tally.where
    assert first != run_pure(20, 500, seed=4, record=True).tally.where


def test_a_full_cluster_refuses_the_rest_with_a_reason() -> None:
    report = run_pure(2, 1500, seed=1, record=True)
    where, refused = report.tally.where, report.tally.refused
    assert where is not None and refused
    assert set(where).isdisjoint(refused) and len(where) + len(refused) == 1500
    assert all(" free" in reason for reason in refused.values())  # the binding resource
    demands = {name: _demand(s.config, s.devices) for name, s in _specs(1, 1500).items()}
    assert not _overcommitted(where, demands, _capacities(1, 2))


def _check_raft_run(members: int, instances: int, seed: int, planners: int,
                    planner_on: str = "follower") -> None:
    report = run_raft(members, instances, seed,
                      RaftOptions(planners=planners, planner_on=planner_on), record=True,
                      keep_states=True)
    assert report.states is not None and len(report.states) == 3
    first: State = report.states[0]
    assert all(state == first for state in report.states[1:])
    assert len(set(report.digests.values())) == 1
    where, refused = report.tally.where, report.tally.refused
    assert where is not None
    assert set(where).isdisjoint(refused) and len(where) + len(refused) == instances
    assert all(refused.values())
    assert {name: inst.location for name, inst in first.instances.items()} == where
    demands = {name: _demand(inst.config, inst.devices)
               for name, inst in first.instances.items()}
    capacity = {name: member.capacity for name, member in first.members.items()}
    assert not _overcommitted(where, demands, capacity, keys.allocation_ratios(first.config))


@pytest.mark.timeout(60)
def test_raft_run_commits_through_three_replicas_that_agree() -> None:
    _check_raft_run(10, 300, seed=2, planners=1)


@pytest.mark.timeout(60)
def test_raft_run_with_a_planner_in_each_follower_places_everything_once() -> None:
    """Two processes plan half each with their own views (as two members taking API
    requests): every instance is placed or refused exactly once, none overcommits."""
    _check_raft_run(4, 600, seed=5, planners=1, planner_on="followers")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("plan_size", [1, 64])
def test_raft_run_replans_what_apply_refuses(plan_size: int) -> None:
    # Three planners that do not see each other's plans on a cluster too small for all:
    # apply refuses the placements that no longer fit (one instance.create each, or items
    # of an instance.create_many), and they are planned again.
    report = run_raft(3, 1200, seed=9, options=RaftOptions(planners=3, plan_size=plan_size),
                      record=True)
    assert report.tally.replanned > 0
    assert report.tally.refused  # and what fits nowhere is refused with a reason
    where = report.tally.where
    assert where is not None and len(where) + len(report.tally.refused) == 1200
    demands = {name: _demand(s.config, s.devices) for name, s in _specs(9, 1200).items()}
    assert not _overcommitted(where, demands, _capacities(9, 3))


def test_command_line_ends_with_the_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--members", "5", "--instances", "50", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("placements/s: ")
    assert any(line.startswith("placements done") for line in lines)
