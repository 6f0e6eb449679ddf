"""The control plane's metrics (``cluster/controllers/control_metrics.py``): scheduler runs
counted by purpose and result with the members each filter dropped, intents by kind and
result, liveness verdicts, failovers timed from the OFFLINE verdict to the instance
running again (``failover_watch.py``), fencing kills counted once (``fencing/kills.py``),
and the families rendered as Prometheus reads them (promtool's check included). The last
tests run the real liveness, HA and intent controllers on a lone RaftStore."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cluster.api.metrics.render import render
from cluster.api.plan_adapter import plan_instance
from cluster.controllers.control_metrics import KINDS, PURPOSES, REASONS, ControlMetrics
from cluster.controllers.failover_watch import FailoverWatch, Watched, outcome
from cluster.controllers.ha import HaController
from cluster.controllers.ha_plan import Failover, Holders, plan_ha
from cluster.controllers.intents import IntentController
from cluster.controllers.liveness import LivenessController
from cluster.controllers.planning import plan_targets
from cluster.controllers.runtime import LeaderRuntime, Lease
from cluster.state.apply import apply
from cluster.state.commands import command
from cluster.state.model import State
from cluster.state.raft import RaftStore
from corral_shared.resources import GiB
from node_agent.fencing import proc
from node_agent.fencing.kills import FenceKills
from node_agent.fencing.lease_file import Lease as FenceLease
from node_agent.fencing.lease_file import Listed, lease_path, write_lease
from node_agent.fencing.watchdog import Watchdog, fenced_file
from scheduler.testing import member, request, view
from tests.unit.test_apply_ha import IMAGE, cluster, cmd, controller, ha_running, synced
from tests.unit.test_ha_plan import carry_out, offline
from tests.unit.test_raft_metrics import _addresses, _until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(families: Iterable[Metric]) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples}


def value(metrics: ControlMetrics, name: str, **labels: str) -> float:
    return samples(metrics.families()).get((name, tuple(sorted(labels.items()))), 0.0)


def placements(metrics: ControlMetrics, purpose: str, result: str) -> float:
    return value(metrics, "corral_scheduler_placements_total", purpose=purpose, result=result)


def rejections(metrics: ControlMetrics) -> dict[str, float]:
    return {reason: value(metrics, "corral_scheduler_rejections_total", reason=reason)
            for reason in REASONS
            if value(metrics, "corral_scheduler_rejections_total", reason=reason)}


# --- the scheduler's runs ---------------------------------------------------------------


def test_a_placement_counts_its_result_its_rejections_by_filter_and_its_time() -> None:
    metrics = ControlMetrics()
    members = view(member("m1", memory=2 * GiB), member("m2"), member("m3", status="OFFLINE"))
    assert metrics.place("create", members, request("r1", memory=4 * GiB)).member == "m2"
    assert placements(metrics, "create", "placed") == 1.0
    assert rejections(metrics) == {"online": 1.0, "memory": 1.0}
    plan = metrics.place("move", members, request("r2", memory=64 * GiB))
    assert plan.member is None
    assert placements(metrics, "move", "refused") == 1.0
    assert rejections(metrics) == {"online": 2.0, "memory": 3.0}
    assert value(metrics, "corral_scheduler_placement_duration_seconds_count") == 2.0
    assert value(metrics, "corral_scheduler_placement_duration_seconds_sum") > 0.0
    # Every purpose and reason has its series from the start, at 0.
    assert all(placements(metrics, p, "refused") == 0.0 for p in PURPOSES if p != "move")
    names = {labels for name, labels in samples(metrics.families())
             if name == "corral_scheduler_rejections_total"}
    assert names == {(("reason", reason),) for reason in REASONS}


def test_the_ha_plan_counts_its_replica_and_failover_placements() -> None:
    metrics = ControlMetrics()
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    steps = plan_ha(state, 100.0, place=metrics.place)
    assert len(steps) == 1 and isinstance(steps[0], Holders)
    assert placements(metrics, "ha_replica", "placed") == 1.0
    carry_out(state, steps, epoch)
    holder = steps[0].members[0]
    synced(state, "c1", holder, 90.0)
    offline(state, "m1")
    steps = plan_ha(state, 100.0, place=metrics.place)
    assert steps == [Failover("u-c1", "c1", holder, 0, 10.0)]
    assert placements(metrics, "ha_failover", "placed") == 1.0
    assert placements(metrics, "ha_failover", "refused") == 0.0


def test_evacuations_and_the_api_count_under_their_purpose_and_dry_runs_not_at_all() -> None:
    metrics = ControlMetrics()
    state = cluster()
    ha_running(state)
    (target, why), = plan_targets(state, ["c1"], {"c1": ["m1"]}, metrics.place).values()
    assert target in ("m2", "m3") and not why
    assert placements(metrics, "evacuation", "placed") == 1.0
    assert rejections(metrics) == {"exclude": 1.0}
    spec: dict[str, Any] = dict(request_id="r", name="c9", type_="container",
                                architecture="x86_64", config={}, devices={},
                                profiles=["default"])
    plan_instance(state, **spec)  # a dry run: the scheduler alone
    assert placements(metrics, "create", "placed") == 0.0
    plan_instance(state, **spec, place=metrics.place)
    plan_instance(state, **spec, target="m2", purpose="move", place=metrics.place)
    assert placements(metrics, "create", "placed") == 1.0
    assert placements(metrics, "move", "placed") == 1.0
    assert rejections(metrics) == {"exclude": 1.0, "target": 2.0}


# --- intents, verdicts ------------------------------------------------------------------


def test_finished_intents_count_by_kind_and_result_and_time_only_whole_ones() -> None:
    metrics = ControlMetrics()
    metrics.move_finished("move", "done", 3.0)
    metrics.move_finished("live_move", "failed", None)
    metrics.move_finished("evacuate", "cancelled", 100.0)
    metrics.move_finished("move", "precopy", 1.0)  # not finished: nothing
    metrics.move_finished("frobnicate", "done", 1.0)  # not a kind we drive: nothing
    metrics.move_downtime("live_move", 0.042)
    found = {(kind, result): value(metrics, "corral_moves_total", kind=kind, result=result)
             for kind in KINDS for result in ("succeeded", "failed", "cancelled")}
    assert {k: v for k, v in found.items() if v} == {
        ("move", "succeeded"): 1.0, ("live_move", "failed"): 1.0,
        ("evacuate", "cancelled"): 1.0}
    assert len(found) == 12  # every series exists, at 0 until counted
    assert value(metrics, "corral_move_duration_seconds_count", kind="move") == 1.0
    assert value(metrics, "corral_move_duration_seconds_count", kind="live_move") == 0.0
    assert value(metrics, "corral_move_duration_seconds_sum", kind="evacuate") == 100.0
    assert value(metrics, "corral_move_downtime_seconds_bucket", kind="live_move",
                 le="0.08") == 1.0
    assert value(metrics, "corral_move_downtime_seconds_bucket", kind="live_move",
                 le="0.04") == 0.0


def test_liveness_verdicts_count_per_member_and_keep_the_offline_time() -> None:
    metrics = ControlMetrics()
    metrics.judged("m2", "OFFLINE", 10.0)
    metrics.judged("m3", "OFFLINE", 11.0)
    metrics.judged("m2", "ONLINE", 20.0)
    metrics.judged("m2", "OFFLINE", 30.0)
    assert value(metrics, "corral_member_liveness_transitions_total", member="m2",
                 status="OFFLINE") == 2.0
    assert value(metrics, "corral_member_liveness_transitions_total", member="m2",
                 status="ONLINE") == 1.0
    assert metrics.offline_at == {"m2": 30.0, "m3": 11.0}
    metrics.judged("m3", "ONLINE", 40.0)
    assert metrics.offline_at == {"m2": 30.0}


# --- failovers --------------------------------------------------------------------------


def _failed_over() -> tuple[State, Watched]:
    """c1 failed over from m1 to m2 (m1 judged OFFLINE at 10.0, committed at 11.0)."""
    state = cluster()
    ha_running(state)
    epoch = controller(state)
    carry_out(state, [Holders("u-c1", ("m2",))], epoch)
    synced(state, "c1", "m2", 90.0)
    offline(state, "m1")
    carry_out(state, plan_ha(state, 100.0), epoch)
    inst = state.instances["c1"]
    assert inst.location == "m2"
    return state, Watched("u-c1", "c1", "m2", inst.epoch, inst.generation, 10.0, 11.0)


def report(state: State, status: str, error: str = "", name: str = "c1") -> None:
    inst = state.instances[name]
    assert apply(state, cmd("instance.observed", uid=inst.uid, generation=inst.generation,
                            status=status, error=error, created=True)).ok


def test_a_failover_recovers_once_the_new_member_reports_it_running() -> None:
    state, watched = _failed_over()
    watch = FailoverWatch()
    watch.add(watched)
    assert outcome(state, watched) == "pending"
    assert watch.recovered(state, 12.0) == []
    report(state, "Stopped")  # created from the replica, not started yet
    assert outcome(state, watched) == "pending"
    report(state, "Running")
    assert watch.recovered(state, 13.5) == [3.5]  # from the verdict, not the commit
    assert watch.watched == {}


def test_a_failover_that_fails_or_moves_on_is_forgotten_untimed() -> None:
    state, watched = _failed_over()
    report(state, "Stopped", error="no replica snapshot r1")
    assert outcome(state, watched) == "lost"
    state, watched = _failed_over()
    state.instances["c1"].epoch += 1  # failed over again since
    assert outcome(state, watched) == "lost"
    state, watched = _failed_over()
    watch = FailoverWatch(give_up=60.0)
    watch.add(watched)
    assert watch.recovered(state, 50.0) == [] and watch.watched
    assert watch.recovered(state, 72.0) == [] and not watch.watched  # given up


# --- fencing ----------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_process_the_watchdog_and_the_daemon_both_killed_counts_once(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    kills = FenceKills(proc.boot_id(), time.monotonic())
    start = proc.starttime(sleeper.pid)
    assert start is not None
    listed = Listed("c1", "lxc", sleeper.pid, start)
    write_lease(lease_path(tmp_path), FenceLease(os.getpid(), time.monotonic() - 1.0,
                                                 (listed,), (), 0, proc.boot_id()))
    kills.read(fenced_file(tmp_path))  # no file yet
    assert kills.count == 0
    Watchdog(tmp_path).look()  # the real watchdog: kills it and records the kill
    assert sleeper.wait(timeout=5) == -9
    kills.read(fenced_file(tmp_path))
    assert kills.count == 1
    kills.killed([listed])  # the daemon's own kill of the same process
    kills.read(fenced_file(tmp_path))  # unchanged file: not read again
    assert kills.count == 1
    records = json.loads(fenced_file(tmp_path).read_text())
    records += [{**records[0], "pid": 1, "boot_id": "another boot"},
                {**records[0], "pid": 2, "killed_at": kills.since - 5.0},  # before us
                "garbage"]
    fenced_file(tmp_path).write_text(json.dumps(records))
    kills.read(fenced_file(tmp_path))
    assert kills.count == 1
    kills.killed([Listed("c2", "qemu", 3, 4)])
    assert kills.count == 2


# --- rendering --------------------------------------------------------------------------


def _busy() -> ControlMetrics:
    metrics = ControlMetrics()
    metrics.place("create", view(member("m1"), member("m2", memory=GiB)),
                  request(memory=2 * GiB))
    metrics.move_finished("live_move", "done", 12.5)
    metrics.move_downtime("live_move", 0.12)
    metrics.failovers.inc()
    metrics.failover_duration.observe(2.5)
    metrics.ha_waiting.set(2)
    metrics.judged("m2", "OFFLINE", 1.0)
    metrics.heartbeat_ages = lambda: {"m1": 0.1, "m2": 5.0}
    return metrics


def test_the_families_render_with_their_types_and_no_created_samples() -> None:
    metrics = _busy()
    text = render(metrics.families()).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types == {
        "corral_scheduler_placements": "counter", "corral_scheduler_rejections": "counter",
        "corral_scheduler_placement_duration_seconds": "histogram",
        "corral_moves": "counter", "corral_move_duration_seconds": "histogram",
        "corral_move_downtime_seconds": "histogram", "corral_ha_failovers": "counter",
        "corral_ha_failover_duration_seconds": "histogram", "corral_ha_waiting": "gauge",
        "corral_member_liveness_transitions": "counter",
        "corral_member_heartbeat_age_seconds": "gauge"}
    assert "_created" not in text
    assert "corral_ha_failovers_total 1.0" in text
    assert 'corral_member_heartbeat_age_seconds{member="m2"} 5.0' in text
    assert render(metrics.families(), openmetrics=True).endswith(b"# EOF\n")
    metrics.heartbeat_ages = None  # not judging liveness: no ages at all
    assert "heartbeat_age" not in render(metrics.families()).decode()


def test_promtool_accepts_the_families() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CORRAL_REQUIRE_REAL") == "1":
            pytest.fail("promtool is missing (Debian's prometheus package)")
        pytest.skip("needs promtool")
    # promtool reads the Prometheus text format (its OpenMetrics counters' HELP names the
    # family without ``_total``, which it takes for a missing help text).
    text = render(_busy().families()).decode()
    result = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


# --- the real controllers on a lone RaftStore -------------------------------------------


async def _lone_store(root: Path) -> RaftStore:
    """A one-voter store whose state knows m1 (itself) and m2 (a member that never
    beats), the offline threshold at its minimum."""
    (address,) = _addresses(1)
    store = RaftStore(address, [], root, "test")
    await store.start()
    capacity = {"cpu": 8, "memory": 16 * GiB, "disk": 100 * GiB}
    await store.submit(command("cluster.bootstrap", member={"name": "m1", "capacity": capacity},
                               pool={"name": "default", "driver": "dir"},
                               network={"name": "br0"}))
    await store.submit(command("join_token.add", name="m2", secret_hash="m2", expires_at=1e12))
    await store.submit(command("member.join", name="m2", secret_hash="m2", address="m2:8443",
                               raft_address="m2:8444", capacity=capacity))
    await store.submit(command("image.add", fingerprint=IMAGE, info={"type": "container"},
                               member="m1"))
    await store.submit(command("config.set", config={"cluster.offline_threshold": "3"},
                               merge=True))
    return store


async def _ha_instance(store: RaftStore, name: str) -> None:
    await store.submit(command("instance.create", uid=f"u-{name}", name=name,
                               type="container", location="m2", image=IMAGE,
                               profiles=["default"], config={"cluster.ha": "restart"},
                               start=True))
    with store.read() as state:
        generation = state.instances[name].generation
    await store.submit(command("instance.observed", uid=f"u-{name}", generation=generation,
                               status="Running", error="", created=True))


def _instance(store: RaftStore, name: str) -> Any:
    with store.read() as state:
        return state.instances.get(name)


def test_a_member_judged_offline_fails_over_and_the_leader_counts_and_times_it(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await _lone_store(tmp_path)
        metrics = ControlMetrics()
        runtime = LeaderRuntime(store, lambda: "m1",
                                [LivenessController(period=0.05, metrics=metrics),
                                 HaController(period=0.05, metrics=metrics)], period=0.05)

        async def beat() -> None:  # m1 stays ONLINE; m2 never beats
            while True:
                await store.submit(command("member.heartbeat", name="m1"))
                await asyncio.sleep(0.3)

        beats = asyncio.create_task(beat())
        try:
            await _ha_instance(store, "c1")  # its replica will be shipped: fails over
            await _ha_instance(store, "c2")  # no replica ever: waits
            runtime.start()
            await _until(lambda: all(_instance(store, n).replicas for n in ("c1", "c2")),
                         10)
            with store.read() as state:
                epoch = state.instances["c1"].epoch
            await store.submit(command("instance.replica_synced", uid="u-c1", member="m1",
                                       source="m2", placement_epoch=epoch, snapshot="r1",
                                       synced_at=time.time(), bytes=10))
            ages = {labels: seconds for (name, labels), seconds in
                    samples(metrics.families()).items()
                    if name == "corral_member_heartbeat_age_seconds"}
            assert set(ages) == {(("member", "m1"),), (("member", "m2"),)}
            assert ages[(("member", "m1"),)] < 3.0
            await _until(lambda: _instance(store, "c1").location == "m1", 15)
            await _until(lambda: value(metrics, "corral_ha_waiting") == 1.0, 5)
            assert value(metrics, "corral_member_liveness_transitions_total", member="m2",
                         status="OFFLINE") == 1.0
            assert value(metrics, "corral_member_liveness_transitions_total", member="m1",
                         status="OFFLINE") == 0.0
            assert value(metrics, "corral_ha_failovers_total") == 1.0
            assert placements(metrics, "ha_replica", "placed") >= 2.0
            assert placements(metrics, "ha_failover", "placed") >= 1.0
            assert value(metrics, "corral_ha_failover_duration_seconds_count") == 0.0
            verdict = metrics.offline_at["m2"]
            await asyncio.sleep(0.2)
            inst = _instance(store, "c1")  # the new member's agent creates and starts it
            await store.submit(command("instance.observed", uid="u-c1",
                                       generation=inst.generation, status="Running",
                                       error="", created=True))
            reported = time.monotonic()
            await _until(lambda: value(
                metrics, "corral_ha_failover_duration_seconds_count") == 1.0, 5)
            took = value(metrics, "corral_ha_failover_duration_seconds_sum")
            assert reported - verdict <= took <= time.monotonic() - verdict
        finally:
            beats.cancel()
            await runtime.close()
            await asyncio.gather(beats, return_exceptions=True)
            await store.close()
        assert value(metrics, "corral_ha_waiting") == 0.0  # no longer leading
        assert "corral_member_heartbeat_age_seconds" not in {
            f.name for f in metrics.families()}

    asyncio.run(scenario())


class _Finisher(IntentController):
    """Finishes each move intent it drives as failed (the kind of work does not matter to
    the counting, which the base class does)."""

    name = "finisher"
    kinds = frozenset({"move"})

    async def drive(self, lease: Lease, intent_id: str, resumed: bool) -> None:
        with lease.store.read() as state:
            phase = state.intents[intent_id].phase
        await asyncio.sleep(0.05)
        await lease.submit("intent.finish", intent=intent_id, from_phase=phase,
                           status="failed", error="no")


def test_the_drive_that_finishes_an_intent_counts_it_and_times_it_when_whole(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await _lone_store(tmp_path)
        metrics = ControlMetrics()
        runtime = LeaderRuntime(store, lambda: "m1", [_Finisher(metrics)], period=0.05)
        try:
            await store.submit(command("intent.create", intent="i1", kind="move",
                                       request={}, locks={}, member="m1"))
            # One an earlier leader had advanced: counted, not timed (its start is not
            # this leader's to know).
            await store.submit(command("intent.create", intent="i2", kind="move",
                                       phase="stopping", request={}, locks={},
                                       member="m1"))
            await store.submit(command("intent.create", intent="e1", kind="evacuate",
                                       request={}, locks={}, member="m1"))  # not its kind
            runtime.start()
            await _until(lambda: value(metrics, "corral_moves_total", kind="move",
                                       result="failed") == 2.0, 10)
            assert value(metrics, "corral_move_duration_seconds_count", kind="move") == 1.0
            assert value(metrics, "corral_move_duration_seconds_sum", kind="move") >= 0.05
            assert value(metrics, "corral_moves_total", kind="evacuate",
                         result="failed") == 0.0
        finally:
            await runtime.close()
            await store.close()

    asyncio.run(scenario())
