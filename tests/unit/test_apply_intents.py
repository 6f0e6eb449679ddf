"""Intents and the controller epoch in the state machine: a deposed leader's controller is
fenced out by the epoch, a step from the wrong phase is refused, an intent holds its
instances against every other change, and a refusal changes nothing."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.state.apply import apply
from cluster.state.commands import Command, Result
from cluster.state.digest import state_digest
from cluster.state.model import Instance, Intent, State
from tests.unit.test_apply_moves import begin, launched, two_members

_ids = itertools.count()


def cmd(type_: str, t: float = 1.0, **args: Any) -> Command:
    return Command(id=f"i{next(_ids)}", type=type_, args=args, time=t)


def records(state: State) -> str:
    """The digest of every record, leaving out the remembered command ids and count
    (which every applied command changes, refused or not)."""
    copy = pickle.loads(pickle.dumps(state))
    copy.recent.clear()
    copy.index = 0
    return state_digest(copy)


def claim(state: State, member: str) -> int:
    result = apply(state, cmd("controller.claim", member=member))
    assert result.ok, result.error
    return int(result.value["epoch"])


def with_move_intent(state: State, name: str = "c1", intent: str = "mv1") -> None:
    launched(state, name, "container", running=False)
    result = apply(state, cmd("intent.create", t=5.0, intent=intent, kind="move",
                              request={"name": name, "target": "m2"}, phase="stop",
                              locks={name: f"u-{name}"}, member="m2"))
    assert result.ok, result.error


def step(state: State, epoch: int, from_phase: str, phase: str, intent: str = "mv1",
         **extra: Any) -> Result:
    return apply(state, cmd("intent.advance", t=7.0, intent=intent, epoch=epoch,
                            from_phase=from_phase, phase=phase, **extra))


def test_each_claim_raises_the_epoch_and_names_the_member() -> None:
    state = State()
    assert (claim(state, "m1"), claim(state, "m2"), claim(state, "m1")) == (1, 2, 3)
    assert (state.controller.member, state.controller.epoch) == ("m1", 3)


def test_a_late_command_from_a_deposed_leaders_controller_is_refused() -> None:
    state = two_members()
    with_move_intent(state)
    old = claim(state, "m1")
    assert step(state, old, "stop", "begin").ok
    new = claim(state, "m2")  # m1 lost leadership; m2's controller took over
    before = records(state)
    for late in (step(state, old, "begin", "pull"),
                 apply(state, cmd("intent.finish", intent="mv1", epoch=old,
                                  from_phase="begin", status="done")),
                 begin(state, "c1", intent="mv1", epoch=old, from_phase="begin"),
                 apply(state, cmd("member.liveness", name="m2", status="OFFLINE", beats=0,
                                  epoch=old)),
                 apply(state, cmd("member.roles", name="m2", roles=[], epoch=old))):
        assert (late.ok, late.code) == (False, 409), late
        assert "Stale controller epoch" in late.error
    assert records(state) == before  # nothing changed
    assert state.intents["mv1"].phase == "begin" and not state.instances["c1"].moving_to
    assert begin(state, "c1", intent="mv1", epoch=new, from_phase="begin").ok
    assert state.instances["c1"].moving_to == "m2"


def test_a_step_from_the_wrong_phase_is_refused() -> None:
    state = two_members()
    with_move_intent(state)
    epoch = claim(state, "m1")
    assert step(state, epoch, "stop", "begin").ok
    again = step(state, epoch, "stop", "begin")  # a second controller, or a retry, late
    assert (again.ok, again.code) == (False, 409)
    assert "in phase 'begin', not 'stop'" in again.error
    early = begin(state, "c1", intent="mv1", epoch=epoch, from_phase="pull")
    assert (early.ok, early.code) == (False, 409) and not state.instances["c1"].moving_to


def test_a_controller_command_without_epoch_is_refused() -> None:
    state = two_members()
    with_move_intent(state)
    claim(state, "m1")
    no_epoch = apply(state, cmd("intent.advance", intent="mv1", from_phase="stop",
                                phase="begin"))
    assert (no_epoch.ok, no_epoch.code) == (False, 400)
    sneaked = apply(state, cmd("instance.delete", name="c1", intent="mv1"))
    assert (sneaked.ok, sneaked.code) == (False, 400) and "c1" in state.instances


def test_an_intent_holds_its_instance_against_every_other_change() -> None:
    state = two_members()
    with_move_intent(state)
    epoch = claim(state, "m1")
    assert state.instances["c1"].intent == "mv1"
    for other in (cmd("instance.action", name="c1", action="start"),
                  cmd("instance.delete", name="c1"),
                  cmd("instance.patch", name="c1", config={"limits.cpu": "2"}),
                  cmd("instance.move_begin", name="c1", uid="u-c1", target="m2")):
        result = apply(state, other)
        assert (result.ok, result.code) == (False, 409), result
        assert "held by intent mv1" in result.error
    own = apply(state, cmd("instance.patch", name="c1", config={"volatile.evacuate.stopped":
                                                                "true"},
                           intent="mv1", epoch=epoch))
    assert own.ok, own.error
    second = apply(state, cmd("intent.create", intent="mv2", kind="move", request={},
                              locks={"c1": "u-c1"}))
    assert (second.ok, second.code) == (False, 409) and "mv2" not in state.intents


def test_finish_frees_the_instances_and_keeps_the_record() -> None:
    state = two_members()
    with_move_intent(state)
    epoch = claim(state, "m1")
    assert step(state, epoch, "stop", "begin", items={"c1": {"state": "copying"}},
                progress={"fs_progress": "1 MB"}, cancellable=False).ok
    assert apply(state, cmd("intent.progress", intent="mv1", epoch=epoch,
                            items={"c1": {"bytes": 10}}, progress={"bytes": 10})).ok
    refused = apply(state, cmd("intent.cancel", intent="mv1"))
    assert (refused.ok, refused.code) == (False, 409)
    done = apply(state, cmd("intent.finish", t=9.0, intent="mv1", epoch=epoch,
                            from_phase="begin", status="done"))
    assert done.ok, done.error
    intent = state.intents["mv1"]
    assert (intent.phase, intent.locks, intent.updated_at, intent.created_at) == (
        "done", {}, 9.0, 5.0)
    assert intent.items == {"c1": {"state": "copying", "bytes": 10}}
    assert intent.progress == {"fs_progress": "1 MB", "bytes": 10}
    assert state.instances["c1"].intent == ""
    assert apply(state, cmd("instance.action", name="c1", action="start")).ok
    late = step(state, epoch, "done", "begin")
    assert (late.ok, late.code) == (False, 409) and "already done" in late.error


def test_cancel_is_recorded_for_the_controller() -> None:
    state = two_members()
    with_move_intent(state)
    assert apply(state, cmd("intent.cancel", t=6.0, intent="mv1")).ok
    assert state.intents["mv1"].cancel and state.intents["mv1"].updated_at == 6.0
    assert apply(state, cmd("intent.cancel", intent="nope")).code == 404


def test_moves_without_an_intent_work_as_before() -> None:
    state = two_members()
    launched(state, "c1", "container", running=False)
    assert begin(state, "c1").ok
    assert apply(state, cmd("instance.move_end", name="c1", uid="u-c1", target="m2")).ok
    assert state.instances["c1"].location == "m2"


def test_state_without_intents_loads_and_digests() -> None:
    old = State()
    for key in ("intents", "controller"):
        del old.__dict__[key]
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.intents == {} and loaded.controller.epoch == 0
    state = two_members()
    with_move_intent(state)
    copy = pickle.loads(pickle.dumps(state))
    assert isinstance(copy.intents["mv1"], Intent)
    assert state_digest(copy) == state_digest(state)
    copy.intents["mv1"].phase = "begin"
    assert state_digest(copy) != state_digest(state)  # the digest covers intents
    older = two_members()
    launched(older, "c2", "container", running=False)
    # an Instance pickled before the field (slotted records keep a dict state)
    record: Any = older.instances["c2"]
    fields: dict[str, Any] = record.__getstate__()
    del fields["intent"]
    before: Any = Instance.__new__(Instance)
    before.__setstate__(fields)
    older.instances["c2"] = before
    older = pickle.loads(pickle.dumps(older))
    assert older.instances["c2"].intent == ""
    assert apply(older, cmd("instance.action", name="c2", action="start")).ok


def test_finished_intents_are_forgotten_past_the_kept_number() -> None:
    from cluster.state.apply_intents import KEEP_FINISHED
    state = State()
    epoch = claim(state, "m1")
    for n in range(KEEP_FINISHED + 5):
        assert apply(state, cmd("intent.create", intent=f"x{n}", kind="noop")).ok
        assert apply(state, cmd("intent.finish", intent=f"x{n}", epoch=epoch,
                                from_phase="new", status="failed", error="boom")).ok
    assert len(state.intents) == KEEP_FINISHED
    assert "x4" not in state.intents and f"x{KEEP_FINISHED + 4}" in state.intents



def test_the_finished_children_of_a_running_intent_are_kept() -> None:
    from cluster.state.apply_intents import KEEP_FINISHED
    state = State()
    epoch = claim(state, "m1")
    assert apply(state, cmd("intent.create", intent="evac", kind="evacuate")).ok
    children = [f"evac.c{n}.1" for n in range(KEEP_FINISHED + 10)]
    for child in children:
        assert apply(state, cmd("intent.create", intent=child, kind="move")).ok
        assert apply(state, cmd("intent.finish", intent=child, epoch=epoch,
                                from_phase="new", status="done")).ok
    assert set(children) <= set(state.intents)  # a new leader finds every one of them
    assert apply(state, cmd("intent.finish", intent="evac", epoch=epoch,
                            from_phase="new", status="done")).ok
    assert apply(state, cmd("intent.create", intent="later", kind="noop")).ok
    assert apply(state, cmd("intent.finish", intent="later", epoch=epoch,
                            from_phase="new", status="done")).ok
    assert len(state.intents) == KEEP_FINISHED

# Property: whatever the interleaving of claims and steps from two controllers, a step
# applies only under the epoch current at that moment and from the phase the intent is
# in, so the phases applied form one chain with no step taken twice.
PHASES = ["new", "a", "b", "c", "d"]
OPS = st.lists(st.one_of(
    st.tuples(st.just("claim"), st.sampled_from(["m1", "m2"])),
    st.tuples(st.just("step"), st.sampled_from(["m1", "m2"]), st.integers(0, 3))),
    max_size=40)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_steps_apply_only_under_the_current_epoch_and_phase(ops: list[Any]) -> None:
    state = State()
    assert apply(state, cmd("intent.create", intent="x", kind="noop")).ok
    epochs: dict[str, int] = {}  # the epoch each member's controller believes it holds
    applied: list[tuple[str, str]] = []
    for op in ops:
        if op[0] == "claim":
            epochs[op[1]] = claim(state, op[1])
            continue
        _, member, index = op
        if member not in epochs:
            continue
        from_phase, phase = PHASES[index], PHASES[index + 1]
        phase_now = applied[-1][1] if applied else "new"  # as the steps so far left it
        expected = epochs[member] == state.controller.epoch and from_phase == phase_now
        result = step(state, epochs[member], from_phase, phase, intent="x")
        assert result.ok == expected, (op, result, epochs, state.controller)
        if result.ok:
            applied.append((from_phase, phase))
    chain = ["new"] + [phase for _, phase in applied]
    assert [f for f, _ in applied] == chain[:-1]
    assert state.intents["x"].phase == chain[-1]
