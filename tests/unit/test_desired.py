"""plan_instance: existence, name and spec as desired state, closed step by step."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.desired import (
    Record,
    Reported,
    Step,
    instance_converged,
    local_name,
    plan_instance,
    reached,
)


class Host:
    """What a host has: volumes by name, the spec revision each was last defined with."""

    def __init__(self, volumes: dict[str, int]) -> None:
        self.volumes = dict(volumes)

    def carry_out(self, want: Record, step: Step) -> None:
        if step.kind == "create":
            self.volumes.setdefault(want.name, want.spec_gen)
        elif step.kind == "rename" and step.old in self.volumes:
            self.volumes[want.name] = self.volumes.pop(step.old)
        elif step.kind == "update":
            self.volumes[want.name] = want.spec_gen
        elif step.kind == "delete":
            self.volumes.pop(step.old, None)


def has(host: Host, want: Record, seen: Reported) -> bool:
    return local_name(want, seen) in host.volumes or want.name in host.volumes


def converge(want: Record, seen: Reported, host: Host, crash_after: int = -1) -> Reported:
    """One agent pass: plan, carry out (up to ``crash_after`` steps, then die before
    reporting), report."""
    steps = plan_instance(want, seen, has(host, want, seen))
    for number, step in enumerate(steps):
        if number == crash_after:
            return seen  # died: nothing reported
        host.carry_out(want, step)
    return reached(want, seen, steps)


def test_a_new_record_is_created_under_its_name_with_its_spec() -> None:
    want = Record("c1", generation=2)
    assert plan_instance(want, Reported(created=False), False) == (Step("create", 2),)


def test_a_created_instance_whose_volume_is_lost_is_reported_missing_not_recreated() -> None:
    want = Record("pet", generation=4, spec_gen=3)
    assert [s.kind for s in plan_instance(want, Reported(spec_gen=3), False)] == ["missing"]


def test_renames_before_the_agent_came_to_it_are_one_rename() -> None:
    want = Record("c", generation=3, name_gen=3)
    assert plan_instance(want, Reported(name="a"), True) == (Step("rename", 3, "a"),)
    assert reached(want, Reported(name="a"), (Step("rename", 3, "a"),)) == Reported()


def test_a_failed_rename_reports_the_name_the_host_still_has() -> None:
    want = Record("c", generation=3, name_gen=3)
    step = Step("rename", 3, "a")
    assert reached(want, Reported(name="a"), (), step).name == "a"


def test_a_rename_before_the_create_creates_under_the_new_name() -> None:
    want = Record("b", generation=2, name_gen=2)
    assert [s.kind for s in plan_instance(want, Reported(False, "a"), False)] == ["create"]


def test_delete_removes_the_local_name_even_mid_rename() -> None:
    want = Record("new", generation=5, deleted=True, name_gen=4)
    assert plan_instance(want, Reported(name="old"), True) == (
        Step("delete", 5, "old"), Step("delete", 5, "new"))


def test_a_move_holds_the_instance() -> None:
    want = Record("c1", generation=3, moving=True)
    assert plan_instance(want, Reported(created=False), False) == ()
    assert plan_instance(want, Reported(), False) == ()


NAMES = st.sampled_from(["a", "b", "c"])


@st.composite
def situations(draw: st.DrawFn) -> tuple[Record, Reported, Host]:
    """A record, the agent's last report and a host consistent with them (or not: the
    host may have lost the volume)."""
    spec_gen = draw(st.integers(0, 3))
    want = Record(draw(NAMES), generation=10, spec_gen=spec_gen, name_gen=draw(
        st.integers(0, 10)), deleted=draw(st.booleans()))
    created = draw(st.booleans())
    seen = Reported(created, draw(st.sampled_from(["", "a", "b", "c"])),
                    draw(st.integers(0, spec_gen)))
    if seen.name == want.name:
        seen = replace(seen, name="")
    local = local_name(want, seen)
    lost = draw(st.booleans())
    volumes = {} if not created or lost else {local: seen.spec_gen}
    if not created and draw(st.booleans()):  # created, then died before its report
        volumes = {local: spec_gen}
    return want, seen, Host(volumes)


@settings(max_examples=300, deadline=None)
@given(situations())
def test_planning_again_after_the_plan_is_carried_out_finds_nothing(
        case: tuple[Record, Reported, Host]) -> None:
    want, seen, host = case
    lost = seen.created and local_name(want, seen) not in host.volumes and not want.deleted
    after = converge(want, seen, host)
    again = plan_instance(want, after, has(host, want, after))
    if want.deleted:
        assert host.volumes == {}
    elif lost:  # nothing to do but report it again
        assert [s.kind for s in again] == ["missing"]
        assert host.volumes == {}
    else:
        assert again == ()
        assert instance_converged(want, after)
        assert host.volumes == {want.name: want.spec_gen}


@settings(max_examples=300, deadline=None)
@given(situations(), st.integers(0, 3))
def test_a_crash_after_any_prefix_of_steps_converges_to_the_same_end(
        case: tuple[Record, Reported, Host], crash_after: int) -> None:
    want, seen, host = case
    calm = Host(host.volumes)
    end = converge(want, seen, calm)
    after = converge(want, seen, host, crash_after)  # died after some steps, unreported
    after = converge(want, after, host)  # the agent restarts and converges again
    assert host.volumes == calm.volumes
    assert after == end
