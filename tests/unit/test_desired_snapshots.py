"""plan_snapshots: the snapshot set and restores as desired state (pure planning only;
the agent does not use it yet, see node_agent/desired_snapshots.py)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.desired_snapshots import SnapStep, SnapWant, plan_snapshots


class Host:
    """A host's snapshots (name -> content) and the instance's current content."""

    def __init__(self, snaps: dict[str, int], content: int) -> None:
        self.snaps, self.content = dict(snaps), content

    def carry_out(self, step: SnapStep) -> None:  # each as idempotent as actions.py's
        if step.kind == "snapshot":
            self.snaps.setdefault(step.snapshot, self.content)
        elif step.kind == "snapshot_delete":
            self.snaps.pop(step.snapshot, None)
        elif step.kind == "snapshot_rename" and step.old in self.snaps:
            self.snaps[step.snapshot] = self.snaps.pop(step.old)
        elif step.kind == "restore":
            self.content = self.snaps[step.snapshot]


def settle(entries: tuple[SnapWant, ...], done: tuple[SnapStep, ...]
           ) -> tuple[SnapWant, ...]:
    """What the report of ``done`` makes of the record (as apply_instances does)."""
    deleted = {s.snapshot for s in done if s.kind == "snapshot_delete"}
    taken = {s.snapshot for s in done if s.kind == "snapshot"}
    renamed = {s.snapshot for s in done if s.kind == "snapshot_rename"}
    kept = []
    for entry in entries:
        if entry.deleted and (entry.local or entry.name) in deleted:
            continue
        if entry.name in taken:
            entry = replace(entry, ready=True)
        if entry.name in renamed:
            entry = replace(entry, local="")
        kept.append(entry)
    return tuple(kept)


def test_a_take_a_restore_and_a_take_come_in_the_order_asked() -> None:
    entries = (SnapWant("after", 7, ready=False), SnapWant("before", 5, ready=False))
    steps = plan_snapshots(entries, 6, "old", restored=0)
    assert [(s.kind, s.snapshot) for s in steps] == [
        ("snapshot", "before"), ("restore", "old"), ("snapshot", "after")]


def test_renames_before_the_agent_came_to_it_are_one_rename() -> None:
    assert plan_snapshots((SnapWant("c", 4, local="a"),), 0, "", 0) == (
        SnapStep("snapshot_rename", 4, "c", "a"),)


def test_a_restore_already_reported_is_not_done_again() -> None:
    assert plan_snapshots((SnapWant("s", 1),), 3, "s", restored=3) == ()


@st.composite
def situations(draw: st.DrawFn) -> tuple[tuple[SnapWant, ...], Host, int]:
    names = draw(st.lists(st.sampled_from("abcdef"), unique=True, max_size=4))
    entries, snaps = [], {}
    for number, name in enumerate(names):
        kind = draw(st.sampled_from(["ready", "take", "delete", "rename"]))
        if kind == "take":
            entries.append(SnapWant(name, number + 1, ready=False))
        elif kind == "delete":
            entries.append(SnapWant(name, number + 1, deleted=True))
            snaps[name] = number
        elif kind == "rename":
            local = name.upper()
            entries.append(SnapWant(name, number + 1, local=local))
            snaps[local] = number
        else:
            entries.append(SnapWant(name, number + 1))
            snaps[name] = number
    return tuple(entries), Host(snaps, 100), draw(st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(situations())
def test_planning_again_after_the_plan_is_carried_out_and_reported_finds_nothing(
        case: tuple[tuple[SnapWant, ...], Host, int]) -> None:
    entries, host, crash_after = case
    steps = plan_snapshots(entries, 0, "", 0)
    for step in steps[:crash_after]:  # a crash after a prefix: nothing reported
        host.carry_out(step)
    steps = plan_snapshots(entries, 0, "", 0)
    for step in steps:
        host.carry_out(step)
    after = settle(entries, steps)
    assert plan_snapshots(after, 0, "", 0) == ()
    assert set(host.snaps) == {e.name for e in after}
