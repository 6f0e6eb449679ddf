"""plan_snapshots with apply: the snapshot set and restores as desired state, closed step
by step and settled by the agent's report (cluster/state/apply_snapshots.py)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.state.apply import apply
from cluster.state.model import Instance, State
from node_agent.desired_snapshots import SnapStep, SnapWant, plan_snapshots
from tests.unit.test_apply import bootstrapped, cmd, create


class Host:
    """A host's snapshots (name -> content) and the instance's current content; each
    step as idempotent as node_agent/actions.py's."""

    def __init__(self) -> None:
        self.snaps: dict[str, int] = {}
        self.content = 0

    def carry_out(self, step: SnapStep) -> None:
        if step.kind == "snapshot":
            self.snaps.setdefault(step.snapshot, self.content)
        elif step.kind == "snapshot_delete":
            for name in step.names:
                self.snaps.pop(name, None)
        elif step.kind == "snapshot_rename" and step.old in self.snaps:
            self.snaps[step.snapshot] = self.snaps.pop(step.old)
        elif step.kind == "restore":
            found = [name for name in step.names if name in self.snaps]
            if found:
                self.content = self.snaps[found[0]]
            elif not step.gone_ok:
                raise LookupError(step.snapshot)


def plan(inst: Instance) -> tuple[SnapStep, ...]:
    """What the agent plans from the record (as ``NodeAgent._read`` does)."""
    entries = tuple(SnapWant(s.name, s.generation, s.ready, s.deleted, s.local)
                    for s in inst.snapshots.values())
    return plan_snapshots(entries, inst.restore_gen, inst.restore_snap,
                          inst.observed.restore_gen)


def report(state: State, inst: Instance, done: tuple[SnapStep, ...],
           failed: SnapStep | None = None, error: str = "") -> None:
    wire = [[s.kind, s.generation, s.snapshot, s.old] for s in done]
    apply(state, cmd("instance.observed", id_=f"r{len(state.recent)}", uid=inst.uid,
                     generation=failed.generation if failed else inst.generation,
                     status="Stopped", created=True, error=error, snapshots=wire,
                     snapshot_failed=[failed.kind, failed.generation, failed.snapshot,
                                      failed.old] if failed else None))


def converge(state: State, inst: Instance, host: Host, crash_after: int = -1) -> None:
    """One agent pass: plan, carry out (up to ``crash_after`` steps, then die before
    reporting), report."""
    steps = plan(inst)
    for step in steps[:crash_after] if crash_after >= 0 else steps:
        host.carry_out(step)
    if crash_after < 0:
        report(state, inst, steps)


def made(taken: list[str]) -> tuple[State, Instance, Host]:
    """An instance with the snapshots ``taken`` (each of other content), reported."""
    state, host = bootstrapped(), Host()
    create(state, "c1")
    inst = state.instances["c1"]
    report(state, inst, ())
    for number, name in enumerate(taken):
        host.content = number + 1
        apply(state, cmd("instance.snapshot", name="c1", snapshot=name))
        converge(state, inst, host)
    host.content = 100
    return state, inst, host


def ask(state: State, kind: str, **args: Any) -> Any:
    return apply(state, cmd(kind, id_=f"a{len(state.recent)}", name="c1", **args))


def test_a_take_a_restore_and_a_take_come_in_the_order_asked() -> None:
    state, inst, host = made(["old"])
    ask(state, "instance.snapshot", snapshot="before")
    ask(state, "instance.restore", snapshot="old")
    ask(state, "instance.snapshot", snapshot="after")
    assert [(s.kind, s.snapshot) for s in plan(inst)] == [
        ("snapshot", "before"), ("restore", "old"), ("snapshot", "after")]
    converge(state, inst, host)
    assert host.snaps == {"old": 1, "before": 100, "after": 1} and host.content == 1
    assert plan(inst) == () and not inst.busy


def test_renames_before_the_agent_came_to_it_are_one_rename() -> None:
    state, inst, _ = made(["a"])
    ask(state, "instance.snapshot_rename", snapshot="a", new_name="b")
    ask(state, "instance.snapshot_rename", snapshot="b", new_name="c")
    assert plan(inst) == (SnapStep("snapshot_rename", inst.generation, "c", "a"),)


def test_a_restore_then_a_rename_done_and_unreported_restores_under_the_new_name() -> None:
    """The restore names its snapshot by the entry: after a crash that came once the
    rename was done, it finds the snapshot under its new name."""
    state, inst, host = made(["a"])
    ask(state, "instance.restore", snapshot="a")
    ask(state, "instance.snapshot_rename", snapshot="a", new_name="b")
    converge(state, inst, host, crash_after=2)  # both done, then died before the report
    assert host.snaps == {"b": 1}
    host.content = 7  # written since: the restore must not be lost, nor fail
    converge(state, inst, host)
    assert host.content == 1 and plan(inst) == () and inst.results[inst.generation] == ""


def test_a_failed_take_is_reported_at_its_generation_and_leaves_no_record() -> None:
    state, inst, host = made([])
    take = ask(state, "instance.snapshot", snapshot="s").value["generation"]
    (step,) = plan(inst)
    report(state, inst, (), step, "No space left on device")
    assert inst.snapshots == {} and inst.results[take] == "No space left on device"
    assert plan(inst) == ()


OPS = st.lists(st.tuples(st.sampled_from(["take", "delete", "rename", "restore"]),
                         st.sampled_from("abcd"), st.sampled_from("abcd")), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abc"), unique=True), OPS, st.integers(0, 6))
def test_a_crash_after_any_prefix_of_steps_converges_to_the_same_end(
        taken: list[str], ops: list[tuple[str, str, str]], crash_after: int) -> None:
    """Changes asked while the agent was away (apply refuses the impossible ones), then
    a pass that dies after some steps and a pass after the restart: the same host and
    record as one calm pass, and nothing left to plan."""
    state, inst, host = made(taken)
    for kind, name, new in ops:
        if kind == "take":
            ask(state, "instance.snapshot", snapshot=name)
        elif kind == "delete":
            ask(state, "instance.snapshot_delete", snapshot=name)
        elif kind == "rename":
            ask(state, "instance.snapshot_rename", snapshot=name, new_name=new)
        else:
            ask(state, "instance.restore", snapshot=name)
    calm_state = copy.deepcopy(state)
    calm, calm_host = calm_state.instances["c1"], copy.deepcopy(host)
    converge(calm_state, calm, calm_host)
    converge(state, inst, host, crash_after)
    converge(state, inst, host)
    assert (host.snaps, host.content) == (calm_host.snaps, calm_host.content)
    assert inst.snapshots == calm.snapshots and plan(inst) == () and not inst.busy
    assert set(host.snaps) == set(inst.snapshots)
    assert all(s.shown and not s.local for s in inst.snapshots.values())
