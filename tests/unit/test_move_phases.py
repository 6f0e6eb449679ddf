"""The pure decisions of the move and evacuation controllers: what a controller does
with a move it finds in each phase (a new leader undoes before the switch and rolls
forward after it), what it does with each evacuation item, and how an intent reads as an
LXD operation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cluster.api.intent_ops import render
from cluster.controllers.evacuation import ATTEMPTS, child_id, item_step, plan_items, summary
from cluster.controllers.move_phases import COLD_PHASES, LIVE_PHASES, decide
from cluster.state.model import Intent

PHASES = sorted(set(COLD_PHASES) | set(LIVE_PHASES))


def _decide(phase: str, *, at: str = "m1", moving_to: str = "", cancel: bool = False,
            resumed: bool = True, finished: bool = False) -> str:
    return decide(phase, cancel=cancel, finished=finished, location=at, moving_to=moving_to,
                  source="m1", target="m2", resumed=resumed)


def test_a_new_leader_undoes_every_phase_before_the_switch() -> None:
    for phase in ("precopy", "stopping", "begun", "ending", "sending"):
        assert _decide(phase) == "undo", phase
        assert _decide(phase, moving_to="m2") == "undo", phase


def test_a_move_not_started_yet_runs_from_the_start() -> None:
    assert _decide("new", resumed=False) == "run"
    assert _decide("new", resumed=True) == "run"  # nothing was done: nothing to undo


def test_once_the_instance_lives_on_the_target_the_move_only_rolls_forward() -> None:
    # move_end committed but the leader died before it recorded "switched".
    assert _decide("ending", at="m2") == "forward"
    assert _decide("ending", at="m2", cancel=True) == "forward"
    assert _decide("switched", at="m2") == "forward"


def test_a_cancel_before_the_switch_undoes_and_a_finished_move_is_left_alone() -> None:
    assert _decide("begun", cancel=True, resumed=False) == "undo"
    assert _decide("new", cancel=True, resumed=False) == "undo"
    assert _decide("done", at="m2", finished=True) == "none"


@given(st.sampled_from(PHASES), st.sampled_from(["m1", "m2", "m3"]),
       st.sampled_from(["", "m2"]), st.booleans(), st.booleans())
def test_forward_exactly_when_switched(phase: str, at: str, moving_to: str, cancel: bool,
                                       resumed: bool) -> None:
    """Rolling forward is chosen iff the switch committed (or was recorded): never an
    undo of a move whose instance already lives on the target, never a start on the
    target of one that does not."""
    what = _decide(phase, at=at, moving_to=moving_to, cancel=cancel, resumed=resumed)
    lives_on_target = at == "m2" and not moving_to
    assert (what == "forward") == (lives_on_target or phase == "switched")
    if not lives_on_target and phase not in ("new", "switched"):
        assert what == "undo"


def test_evacuation_items_step_through_their_child_moves() -> None:
    todo = {"state": "todo", "attempts": 1}
    assert item_step(todo, None) == "create"
    for phase in ("new", "precopy", "begun", "ending", "switched"):
        assert item_step(todo, phase) == "wait"
    assert item_step(todo, "done") == "done"
    assert item_step(todo, "failed") == "retry"
    assert item_step(todo, "cancelled") == "retry"
    assert item_step({"state": "moving", "attempts": ATTEMPTS}, "failed") == "fail"
    assert item_step({"state": "done"}, None) == "done"
    assert item_step({"state": "failed"}, None) == "fail"
    # A resumed leader finds the child a dead one created by its id.
    assert child_id("ev1", "c1", 2) == "ev1.c1.2" != child_id("ev1", "c1", 1)


def test_items_of_an_evacuation_and_of_a_restore() -> None:
    evacuate = Intent("ev", "evacuate", request={"member": "m3", "mode": ""})
    items = plan_items(evacuate, [("a", "m3", "Running", ""), ("b", "m3", "Running", "stop")])
    assert items["a"]["how"] == "auto" and items["b"]["how"] == "stop"
    assert items["a"]["avoid"] == ["m3"]
    forced = Intent("ev", "evacuate", request={"member": "m3", "mode": "migrate"})
    assert plan_items(forced, [("b", "m3", "Running", "stop")])["b"]["how"] == "migrate"
    restore = Intent("re", "restore", request={"member": "m3"})
    back = plan_items(restore, [("a", "m1", "Running", ""), ("s", "m3", "Stopped", "")])
    assert (back["a"]["how"], back["s"]["how"]) == ("back", "start")
    assert summary({"a": {"state": "done"}, "b": {"state": "moving"}}) == "1/2 instances"


def test_an_intent_reads_as_an_lxd_operation() -> None:
    intent = Intent("mv1", "move", request={"description": "Migrating instance to m2",
                                            "resources": {"instances": ["/1.0/instances/c"]}},
                    phase="begun", progress={"fs_progress": "1.0MB (1.0MB/s)"}, member="m2",
                    created_at=1.0, updated_at=2.0)
    doc = render(intent)
    assert (doc["id"], doc["status"], doc["status_code"], doc["may_cancel"]) == (
        "mv1", "Running", 103, True)
    assert doc["metadata"] == {"fs_progress": "1.0MB (1.0MB/s)"}
    assert doc["location"] == "m2" and doc["resources"]["instances"]
    intent.cancel = True
    assert (render(intent)["status"], render(intent)["may_cancel"]) == ("Cancelling", False)
    intent.phase, intent.error = "failed", "the target refused the volume"
    assert (render(intent)["status"], render(intent)["err"]) == (
        "Failure", "the target refused the volume")
    intent.phase = "cancelled"
    assert render(intent)["status_code"] == 401
    intent.phase, intent.cancellable = "done", False
    assert (render(intent)["status"], render(intent)["err"]) == ("Success", "")
