"""The per-instance records are slotted and share their repeated strings (issue 13:
2 KiB per instance per replica), and snapshots pickled before that still load
(cluster/state/slotted.py, cluster/state/shared.py)."""

from __future__ import annotations

import copyreg
import dataclasses
import pickle
import time
from typing import Any

import pytest

from cluster.state.apply import apply
from cluster.state.commands import Result, command
from cluster.state.model import Action, Instance, Observed, State
from cluster.state.slotted import slotted
from simulator.fake_driver import FakeDriver
from simulator.sim_workload import create_many_command, setup_phases


class _OldPickle:
    """Pickles as a plain (unslotted) dataclass did: ``cls`` rebuilt with a dict state."""

    def __init__(self, cls: type, state: dict[str, Any]) -> None:
        self.cls, self.state = cls, state

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        rebuild = copyreg._reconstructor  # type: ignore[attr-defined]  # what old pickles name
        return rebuild, (self.cls, object, None), self.state


def _instance() -> Instance:
    return Instance(uid="u1", name="c1", type="container", location="m1",
                    architecture="x86_64", image="img", created_at=1.0,
                    config={"limits.cpu": "1"}, pending=[Action(1, "create")])


@pytest.mark.parametrize("cls", [Instance, Action, Observed, Result])
def test_per_instance_records_have_no_instance_dict(cls: type) -> None:
    assert "__slots__" in vars(cls)


def test_a_record_pickled_with_a_dict_state_loads() -> None:
    inst = _instance()
    old = {name: getattr(inst, name) for name in Instance.__dataclass_fields__}
    old["pending"] = [_OldPickle(Action, {"generation": 1, "kind": "create", "args": {}})]
    old["observed"] = _OldPickle(Observed, {"generation": 0, "status": "Stopped",
                                            "error": ""})
    loaded = pickle.loads(pickle.dumps(_OldPickle(Instance, old)))
    assert loaded == inst


def test_an_old_record_without_newer_fields_gets_their_defaults() -> None:
    inst = _instance()
    old = {name: getattr(inst, name) for name in Instance.__dataclass_fields__
           if name not in ("stateful", "moving_to", "snapshots")}
    old["retired_field"] = "dropped"
    loaded = pickle.loads(pickle.dumps(_OldPickle(Instance, old)))
    assert loaded == inst and loaded.snapshots == {} and loaded.stateful is False


def test_a_frozen_result_loads_from_a_dict_state() -> None:
    old = _OldPickle(Result, {"ok": False, "value": None, "error": "no", "code": 409})
    assert pickle.loads(pickle.dumps(old)) == Result(False, None, "no", 409)


def test_new_pickles_hold_plain_dicts_that_old_code_can_load() -> None:
    inst = _instance()
    reduced = inst.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    assert isinstance(reduced, tuple)
    state = reduced[2]
    assert isinstance(state, dict) and state["name"] == "c1"
    assert pickle.loads(pickle.dumps(inst)) == inst


def test_a_field_without_a_default_is_required() -> None:
    with pytest.raises(TypeError, match="lacks 'kind'"):
        pickle.loads(pickle.dumps(_OldPickle(Action, {"generation": 1})))


@slotted
@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int = 0


def test_a_frozen_slotted_record_stays_frozen_after_loading() -> None:
    point = pickle.loads(pickle.dumps(Point(1, 2)))
    assert point == Point(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 3  # type: ignore[misc]


def _placed_state(count: int) -> State:
    driver = FakeDriver(1)
    hosts = driver.members(4)
    state = State()
    for phase in setup_phases(hosts, time.time()):
        for cmd in phase:
            assert apply(state, cmd).ok
    specs = list(driver.instances(count))
    for spec in specs:  # one command per instance, each unpickled as from the log
        cmd = pickle.loads(pickle.dumps(create_many_command([(spec, hosts[0].name)])))
        assert apply(state, cmd).ok
    return state


def test_instances_from_separate_commands_share_their_repeated_strings() -> None:
    first, second = [i for i in _placed_state(12).instances.values() if i.config][:2]
    assert first.location is second.location
    assert first.image is second.image
    assert first.type is second.type and first.architecture is second.architecture
    assert first.profiles[0] is second.profiles[0]
    (key1, value1), (key2, value2) = (next(iter(i.config.items()))
                                      for i in (first, second))
    assert key1 is key2
    assert first.uid is not second.uid


def test_a_whole_state_round_trips_through_pickle() -> None:
    state = _placed_state(5)
    apply(state, command("profile.create", name="extra"))
    loaded = pickle.loads(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    assert loaded.instances == state.instances and loaded.recent == state.recent
