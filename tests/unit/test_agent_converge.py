"""NodeAgent.converge over an in-memory store and a fake host: one report per pass, no
queue of power actions to replay, the same end state after a restart."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.model import Action, Instance, Observed, Snapshot, State
from cluster.state.store import Change
from node_agent import agent as agent_module
from node_agent.agent import NodeAgent
from node_agent.desired import MISSING
from tests.unit.test_apply import bootstrapped, cmd, create


class MemoryStore:
    """Apply in process, push every change to the subscribers (what the agent uses)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.queues: list[asyncio.Queue[Change]] = []
        self.log: list[Command] = []

    async def submit(self, command: Command, timeout: float = 10.0) -> Any:
        result = apply(self.state, command)
        self.log.append(command)
        for queue in self.queues:
            queue.put_nowait(Change(command, result))
        return result.value

    @contextmanager
    def read(self) -> Any:
        yield self.state

    def subscribe(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self.queues.append(queue)
        return queue

    def reports(self, kind: str = "instance.observed") -> list[dict[str, Any]]:
        return [c.args for c in self.log if c.type == kind]


class FakeHost:
    """The statuses the host shows, changed by the steps the agent performs."""

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}
        self.volumes: set[str] = set()
        self.snaps: set[str] = set()  # of the one instance a snapshot test uses
        self.refuse: set[str] = set()
        self.restored: list[str] = []
        self.done: list[tuple[str, str]] = []
        self.images = SimpleNamespace(has=lambda fingerprint: True)
        self.instance_types = ["container"]
        self.vm_driver = None
        self.paths = SimpleNamespace(root=None)  # no fencing lease file, no watchdog
        self.pools: dict[str, Any] = {}  # heartbeats report the host's capacity
        self.pids: dict[str, int] = {}

    def instance_pid(self, name: str, instance_type: str = "container") -> int:
        return self.pids.get(name, 0)

    def status(self, name: str, instance_type: str = "container") -> str:
        return self.statuses.get(name, "Stopped")

    def restock_spare(self, spec: Any) -> None:
        pass

    def has_volume(self, spec: Any) -> bool:
        """A volume made by a create, or one a test shows a status for."""
        return spec.name in self.volumes or spec.name in self.statuses

    def perform(self, node: Any, spec: Any, kind: str, args: dict[str, Any]) -> None:
        self.done.append((spec.name, kind))
        if kind.startswith(("snapshot", "restore")):
            self.snapshot_step(kind, args)
            return
        if kind == "create":
            self.volumes.add(spec.name)
        elif kind == "delete":
            self.volumes.discard(spec.name)
            self.statuses.pop(spec.name, None)
        elif kind == "rename" and args["old"] in self.volumes:
            self.volumes.remove(args["old"])
            self.volumes.add(args["new"])
        after: dict[str, str] = {"create": "Stopped", "start": "Running", "restart": "Running",
                                 "stop": "Stopped", "unfreeze": "Running"}
        if kind == "freeze":
            self.statuses[spec.name] = "Frozen"
        elif kind in after:
            self.statuses[spec.name] = after[kind]


    def snapshot_step(self, kind: str, args: dict[str, Any]) -> None:
        """As idempotent as node_agent/actions.py's; a take of a name in ``refuse``
        fails."""
        if kind == "snapshot" and args["snapshot"] in self.refuse:
            raise RuntimeError("No space left on device")
        if kind == "snapshot":
            self.snaps.add(args["snapshot"])
        elif kind == "snapshot_delete":
            self.snaps.discard(args["snapshot"])
        elif kind == "snapshot_rename" and args["old"] in self.snaps:
            self.snaps.remove(args["old"])
            self.snaps.add(args["new"])
        elif kind == "restore":
            found = {args["old"], args["snapshot"]} & self.snaps
            assert found or args["gone_ok"], args
            self.restored.extend(found)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr(agent_module, "perform", fake.perform)
    return fake


async def settle(agent: NodeAgent) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not any(not w.done() for w in agent._workers.values()):
            return
    raise AssertionError("the agent never settled")


class _OldPickle:
    """Pickles as an instance of ``cls`` whose state is the plain dict ``data`` (what a
    snapshot written before the new fields held)."""

    def __init__(self, cls: type, data: dict[str, Any]) -> None:
        self.cls, self.data = cls, data

    def __reduce__(self) -> Any:
        return (object.__new__, (self.cls,), self.data)


def _old_pickle(cls: type, data: dict[str, Any]) -> Any:
    return _OldPickle(cls, data)


def run(body: Callable[[], Any]) -> None:
    asyncio.run(body())


def test_a_launch_is_one_pass_and_one_report(host: FakeHost) -> None:
    """create + start: the queued create, then the desired Running, reported once."""
    async def body() -> None:
        store = MemoryStore(bootstrapped())
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        await store.submit(cmd("instance.create", uid="u1", name="c1", location="m1",
                               image="a" * 64, profiles=["default"], start=True))
        await settle(agent)
        await agent.close()
        assert host.done == [("c1", "create"), ("c1", "start")]
        assert [(r["generation"], r["status"], r["host"]) for r in store.reports()] == [
            (2, "Running", "m1/b")]
        assert not store.state.instances["c1"].busy
    run(body)


def test_changes_made_while_the_agent_was_down_are_converged_not_replayed(
        host: FakeHost) -> None:
    """stop, start, freeze, unfreeze committed while the agent was away: the instance
    already runs as wanted, so nothing is stopped and started again (the queue of old
    replayed all four), and one report covers them all."""
    async def body() -> None:
        state = bootstrapped()
        create(state, "c1", start=True)
        apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running",
                         host="m1/b"))
        host.statuses["c1"] = "Running"
        for number, action in enumerate(["stop", "start", "freeze", "unfreeze"]):
            assert apply(state, cmd("instance.action", name="c1", action=action,
                                    t=10.0 + number)).ok
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        await settle(agent)
        await agent.close()
        assert host.done == []
        assert [(r["generation"], r["status"]) for r in store.reports()] == [(6, "Running")]
        assert not state.instances["c1"].busy
    run(body)


def test_a_restart_is_carried_out_once_across_agent_restarts(host: FakeHost) -> None:
    async def body() -> None:
        state = bootstrapped()
        create(state, "c1", start=True)
        host.statuses["c1"] = "Running"
        apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running",
                         host="m1/b"))
        apply(state, cmd("instance.action", name="c1", action="restart"))
        store = MemoryStore(state)
        for _ in range(2):  # the second start finds it converged
            agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
            await agent.start()
            await settle(agent)
            await agent.close()
        assert host.done == [("c1", "restart")]
        assert [(r["generation"], r["boots"]) for r in store.reports()] == [(3, 1)]
    run(body)


@pytest.mark.parametrize(("boot", "expected"), [("b", "Stopped"), ("rebooted", "Running")])
def test_a_stopped_instance_is_started_only_after_a_host_reboot(
        host: FakeHost, boot: str, expected: str) -> None:
    """Wanted running, converged, now stopped: on the same host boot it powered off by
    itself (reported, left stopped, as LXD); after a host reboot it is started again,
    however often the daemon restarts before it gets to it."""
    async def body() -> None:
        state = bootstrapped()
        create(state, "c1", start=True)
        apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running",
                         host="m1/b"))
        host.volumes.add("c1")
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id=boot)  # type: ignore[arg-type]
        await agent.start()
        await settle(agent)
        await agent.close()
        inst = state.instances["c1"]
        assert (host.status("c1"), inst.power) == (expected, expected)
    run(body)


def test_a_snapshot_from_before_with_queued_power_actions_converges(host: FakeHost) -> None:
    """An instance pickled before power was desired state (no ``boots``, ``power_args``,
    ``observed.boots`` or ``observed.host``; a queue of create, start, stop stateful)
    loads, and its queue runs once, in order."""
    async def body() -> None:
        state = bootstrapped()
        create(state, "c1")
        record: Any = state.instances["c1"]
        fields: dict[str, Any] = record.__getstate__()
        old = {k: v for k, v in fields.items() if k not in ("boots", "power_args")}
        old["observed"] = _old_pickle(Observed, {"generation": 0, "status": "Stopped",
                                                 "error": ""})
        old["pending"] = [Action(1, "create", {}), Action(2, "start", {}),
                          Action(3, "stop", {"stateful": True})]
        old["generation"], old["power"] = 3, "Stopped"
        inst = pickle.loads(pickle.dumps(_old_pickle(Instance, old)))
        state.instances["c1"] = inst
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        await settle(agent)
        await agent.close()
        assert host.done == [("c1", "create"), ("c1", "start"), ("c1", "stop")]
        assert (inst.boots, inst.power_args, inst.observed.host) == (0, None, "m1/b")
        assert inst.pending == [] and inst.stateful and not inst.busy
        assert [r["generation"] for r in store.reports()] == [3]
    run(body)


def test_update_rename_and_delete_are_converged_not_replayed(host: FakeHost) -> None:
    """Two renames and an update committed while the agent was away: one rename to the
    last name and one update, reported once; then a delete removes it under that name
    and the record is purged."""
    async def body() -> None:
        state = bootstrapped()
        create(state, "c1")
        apply(state, cmd("instance.observed", uid="u-c1", generation=1, status="Stopped",
                         created=True))
        host.volumes.add("c1")
        inst = state.instances["c1"]
        assert apply(state, cmd("instance.rename", name="c1", new_name="c2")).ok
        assert apply(state, cmd("instance.update", name="c2", config={"limits.cpu": "1"},
                                devices={}, profiles=["default"])).ok
        assert apply(state, cmd("instance.rename", name="c2", new_name="c3")).ok
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        await settle(agent)
        assert host.done == [("c3", "rename"), ("c3", "update")]
        assert host.volumes == {"c3"} and not inst.busy and inst.observed.name == ""
        assert [r["generation"] for r in store.reports()] == [4]
        await store.submit(cmd("instance.delete", name="c3"))
        await settle(agent)
        await agent.close()
        assert host.done[-1] == ("c3", "delete") and host.volumes == set()
        assert "c3" not in state.instances
    run(body)


def test_a_lost_volume_is_reported_once_and_never_recreated(host: FakeHost) -> None:
    async def body() -> None:
        state = bootstrapped()
        create(state, "pet")
        apply(state, cmd("instance.observed", uid="u-pet", generation=1, status="Stopped",
                         created=True))
        start = apply(state, cmd("instance.action", name="pet", action="start"))
        store = MemoryStore(state)
        for _ in range(2):  # a restarted agent does not report it again
            agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
            await agent.start()
            await settle(agent)
            await agent.close()
        assert host.done == []
        reports = store.reports()
        assert [(r["generation"], r["error"]) for r in reports] == [
            (start.value["generation"], MISSING)]
        assert state.instances["pet"].power == "Stopped"
    run(body)


def test_a_queued_rename_and_update_from_before_are_read_as_desired_state(
        host: FakeHost) -> None:
    """A snapshot from before queued a rename and an update: the agent renames the volume
    it has under the old name and updates it, once, and the queue is gone."""
    async def body() -> None:
        state = bootstrapped()
        create(state, "c1")
        inst = state.instances["c1"]
        inst.observed.generation, inst.generation, inst.observed.created = 1, 3, True
        inst.pending = [Action(2, "rename", {"old": "c0", "new": "c1"}), Action(3, "update")]
        host.volumes.add("c0")
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        await settle(agent)
        await agent.close()
        assert host.done == [("c1", "rename"), ("c1", "update")]
        assert host.volumes == {"c1"} and inst.pending == [] and not inst.busy
        assert (inst.name, inst.observed.name) == ("c1", "")
    run(body)


def _made(state: State, host: FakeHost) -> Instance:
    create(state, "c1")
    apply(state, cmd("instance.observed", uid="u-c1", generation=1, status="Stopped",
                     created=True))
    host.volumes.add("c1")
    return state.instances["c1"]


def test_snapshot_changes_are_converged_and_a_failed_take_fails_only_its_own(
        host: FakeHost) -> None:
    """Takes, a rename and a restore committed while the agent was away: done in the
    order asked; the take that failed is reported at its generation with its error and
    leaves no record; the rest is reported done."""
    async def body() -> None:
        state = bootstrapped()
        inst = _made(state, host)
        host.refuse.add("bad")
        host.snaps.add("s1")
        taken = apply(state, cmd("instance.snapshot", name="c1", snapshot="s1"))
        apply(state, cmd("instance.observed", uid="u-c1", generation=taken.value["generation"],
                         status="Stopped", snapshots=[["snapshot", 2, "s1", ""]]))
        changes: list[tuple[str, dict[str, Any]]] = [
            ("instance.snapshot", {"snapshot": "bad"}),
            ("instance.snapshot", {"snapshot": "s3"}),
            ("instance.snapshot_rename", {"snapshot": "s1", "new_name": "s2"}),
            ("instance.restore", {"snapshot": "s2"})]
        asked = [apply(state, cmd(kind, name="c1", **args)).value["generation"]
                 for kind, args in changes]
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        await settle(agent)
        await agent.close()
        assert [kind for _, kind in host.done] == [
            "snapshot", "snapshot", "snapshot_rename", "restore"]
        assert host.snaps == {"s2", "s3"} and host.restored == ["s2"]
        assert [(r["generation"], r["error"]) for r in store.reports()] == [
            (asked[0], "No space left on device"), (asked[3], "")]
        assert sorted(inst.snapshots) == ["s2", "s3"]
        assert all(s.shown and not s.local for s in inst.snapshots.values())
        assert inst.results[asked[0]] and not inst.busy
    run(body)


def test_queued_snapshot_changes_from_before_are_read_as_desired_state(
        host: FakeHost) -> None:
    """A snapshot from before queued a rename, a delete, a take and a restore: each is
    carried out once, in order, the restore finds its snapshot under its new name, and
    the queue is gone."""
    async def body() -> None:
        state = bootstrapped()
        inst = _made(state, host)
        host.snaps = {"s0", "gone"}
        inst.snapshots = {name: Snapshot(name, 0.0, ready=ready) for name, ready in
                          [("s1", True), ("gone", False), ("new", False)]}
        inst.pending = [Action(2, "snapshot_rename", {"old": "s0", "new": "s1"}),
                        Action(3, "snapshot_delete", {"snapshot": "gone"}),
                        Action(4, "restore", {"snapshot": "s1"}),
                        Action(5, "snapshot", {"snapshot": "new"})]
        inst.generation = 5
        store = MemoryStore(state)
        agent = NodeAgent("m1", store, host, boot_id="b")  # type: ignore[arg-type]
        await agent.start()
        await settle(agent)
        await agent.close()
        assert [kind for _, kind in host.done] == [
            "snapshot_rename", "snapshot_delete", "restore", "snapshot"]
        assert host.snaps == {"s1", "new"} and host.restored == ["s1"]
        assert inst.pending == [] and not inst.busy
        assert sorted(inst.snapshots) == ["new", "s1"]
        assert all(s.shown and not s.local for s in inst.snapshots.values())
        assert [r["generation"] for r in store.reports()] == [5]
    run(body)
