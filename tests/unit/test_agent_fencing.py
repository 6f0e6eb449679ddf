"""The node agent under its self-fence (``node_agent.fencing.guard``), over an in-memory
store and a fake host: no HA instance starts before the first acknowledged heartbeat or
while the lease has run out, the lease's end kills the HA processes from inside the daemon
too, and what a fence stopped is started again (not reported as stopped by itself) once
the lease is held again. Non-HA instances never wait."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cluster.state.apply import apply
from cluster.state.commands import Command
from node_agent import agent as agent_module
from node_agent.agent import NodeAgent
from node_agent.fencing.guard import FenceGuard
from tests.unit.test_agent_converge import FakeHost, MemoryStore, run
from tests.unit.test_apply_ha import cluster, cmd, launch

HA = {"cluster.ha": "restart"}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CutStore(MemoryStore):
    """Heartbeats time out while ``cut`` (this member cannot reach a quorum)."""

    cut = True

    async def submit(self, command: Command, timeout: float = 10.0) -> Any:
        if command.type == "member.heartbeat" and self.cut:
            await asyncio.sleep(min(timeout, 0.05))
            raise TimeoutError("no quorum within reach")
        return await super().submit(command, timeout)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr(agent_module, "perform", fake.perform)
    return fake


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


async def until(predicate: Any, seconds: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, f"not within {seconds:g} s: {what}"
        await asyncio.sleep(0.02)


def test_no_ha_instance_starts_before_the_first_acknowledged_heartbeat(host: FakeHost) -> None:
    async def body() -> None:
        state = cluster(2)
        assert launch(state, "c1", **HA).ok and launch(state, "c2").ok
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        assert not await agent.converge("u-c1")
        assert not await agent.converge("u-c2")
        assert host.done == [("c2", "create"), ("c2", "start")]  # only the non-HA one
        agent.fencing.fence.renewed(agent.fencing.clock())
        await agent.converge("u-c1")
        assert host.done[2:] == [("c1", "create"), ("c1", "start")]
        assert state.instances["c1"].observed.status == "Running"
    run(body)


@pytest.mark.parametrize(("fenced", "expected"), [(True, "Running"), (False, "Stopped")])
def test_what_the_fence_stopped_is_started_again_not_reported_self_stopped(
        host: FakeHost, fenced: bool, expected: str) -> None:
    async def body() -> None:
        state = cluster(2)
        assert launch(state, "c1", **HA).ok
        inst = state.instances["c1"]
        assert apply(state, cmd("instance.observed", uid=inst.uid, generation=inst.generation,
                                status="Running", error="", created=True, host="m1/b")).ok
        host.volumes.add("c1")  # there, and stopped
        agent = NodeAgent("m1", MemoryStore(state), host, boot_id="b")  # type: ignore[arg-type]
        if fenced:
            agent.fencing.fenced.add("c1")
        agent.fencing.fence.renewed(agent.fencing.clock())
        await agent.converge("u-c1")
        assert (host.status("c1"), state.instances["c1"].power) == (expected, expected)
        assert "c1" not in agent.fencing.fenced
    run(body)


def test_a_member_cut_off_starts_its_ha_instance_once_a_heartbeat_is_acknowledged(
        host: FakeHost) -> None:
    async def body() -> None:
        state = cluster(2)
        assert launch(state, "c1", **HA).ok
        store = CutStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        try:
            await asyncio.sleep(1.2)  # three heartbeats, none acknowledged
            assert host.done == [] and agent.fencing.fence.fenced()
            store.cut = False  # the next one is: on_lift kicks every local instance
            await until(lambda: host.done == [("c1", "create"), ("c1", "start")], 3.0,
                        "c1 created and started")
            assert not agent.fencing.fence.fenced()
        finally:
            await agent.close()
    run(body)


def test_the_daemon_kills_its_ha_processes_itself_when_the_lease_runs_out(
        host: FakeHost, sleeper: subprocess.Popen[bytes]) -> None:
    async def body() -> None:
        state = cluster(2)
        assert launch(state, "c1", **HA).ok and launch(state, "c2").ok
        host.pids = {"c1": sleeper.pid, "c2": 1}
        clock = Clock()
        guard = FenceGuard(lambda: "m1", MemoryStore(state), host, None, clock)  # type: ignore[arg-type]
        guard.fence.renewed(clock.now)
        await guard.refresh()
        assert list(guard.listed) == ["c1"]  # HA only
        task = guard.start()
        try:
            await asyncio.sleep(0.3)
            assert sleeper.poll() is None  # the lease holds
            clock.now += guard.fence.lease_seconds + 0.01
            await until(lambda: sleeper.poll() is not None, 2.0, "the HA process killed")
            assert sleeper.returncode == -9
            assert guard.fenced == {"c1"} and guard.listed == {}
            assert guard.kills.count == 1  # corral_ha_fenced_instances_total
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(body)
