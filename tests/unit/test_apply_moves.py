"""Moves in the state machine: who may move and how (cold, or live for a running VM),
the target's reservation while the copy runs, and no change on refusal."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import pytest

from cluster.state import reservations
from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.model import State
from corral_shared.resources import ZERO, GiB

CONTAINER_IMAGE = "c" * 64
VM_IMAGE = "d" * 64
_ids = itertools.count()


def cmd(type_: str, **args: Any) -> Command:
    return Command(id=f"m{next(_ids)}", type=type_, args=args, time=1.0)


def two_members() -> State:
    state = State()
    capacity = {"cpu": 8, "memory": 16 * GiB, "disk": 100 * GiB}
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "capacity": capacity},
                            pool={"name": "default", "driver": "dir"},
                            network={"name": "br0"})).ok
    apply(state, cmd("join_token.add", name="m2", secret_hash="h", expires_at=10.0))
    assert apply(state, cmd("member.join", name="m2", secret_hash="h", address="m2:8443",
                            raft_address="m2:8444", capacity=capacity)).ok
    for member in state.members.values():  # as members with QEMU report at heartbeat
        member.instance_types = ["container", "virtual-machine"]
    for fingerprint, kind in ((CONTAINER_IMAGE, "container"), (VM_IMAGE, "virtual-machine")):
        assert apply(state, cmd("image.add", fingerprint=fingerprint, info={"type": kind},
                                member="m1")).ok
    return state


def launched(state: State, name: str, kind: str, running: bool) -> None:
    image = VM_IMAGE if kind == "virtual-machine" else CONTAINER_IMAGE
    result = apply(state, cmd("instance.create", uid=f"u-{name}", name=name, type=kind,
                              location="m1", image=image, profiles=["default"],
                              start=running))
    assert result.ok, result.error
    inst = state.instances[name]
    status = "Running" if running else "Stopped"  # the agent converged and reported once
    assert apply(state, cmd("instance.observed", uid=inst.uid, generation=inst.generation,
                            status=status, error="")).ok


def begin(state: State, name: str, **extra: Any) -> Any:
    return apply(state, cmd("instance.move_begin", name=name, uid=f"u-{name}", target="m2",
                            **extra))


@pytest.mark.parametrize(("kind", "running", "live", "error"), [
    ("container", True, False, "Stop the instance before moving it"),
    ("container", True, True, "Only virtual machines migrate live"),
    ("virtual-machine", True, False, "Stop the instance before moving it"),
    ("virtual-machine", False, True, "Only a running virtual machine migrates live"),
])
def test_refused_moves_change_nothing(kind: str, running: bool, live: bool,
                                      error: str) -> None:
    state = two_members()
    launched(state, "i1", kind, running)
    before = pickle.dumps(state)
    result = begin(state, "i1", live=live)
    assert not result.ok and error in result.error
    after = pickle.loads(before)
    for changed in (state, after):  # only the bookkeeping of applied commands moves
        changed.recent.clear()
        changed.index = 0
    assert state == after


@pytest.mark.parametrize(("kind", "running", "live"), [
    ("container", False, False),
    ("virtual-machine", False, False),
    ("virtual-machine", True, True),
])
def test_a_move_reserves_on_both_ends_then_lives_on_the_target(kind: str, running: bool,
                                                               live: bool) -> None:
    state = two_members()
    launched(state, "i1", kind, running)
    demand = state.instances["i1"].demand
    assert begin(state, "i1", live=live).ok
    assert reservations.reserved(state, "m1") == reservations.reserved(state, "m2") == demand
    busy = apply(state, cmd("instance.action", name="i1", action="stop"))
    assert not busy.ok and "being moved" in busy.error
    assert apply(state, cmd("instance.move_end", name="i1", uid="u-i1", target="m2")).ok
    inst = state.instances["i1"]
    assert (inst.location, inst.moving_to) == ("m2", "")
    assert inst.power == ("Running" if running else "Stopped")  # a live move never stops it
    assert reservations.reserved(state, "m1") == ZERO
    assert reservations.reserved(state, "m2") == demand


def test_an_aborted_live_migration_frees_the_target() -> None:
    state = two_members()
    launched(state, "v1", "virtual-machine", True)
    assert begin(state, "v1", live=True).ok
    assert apply(state, cmd("instance.move_abort", name="v1", uid="u-v1")).ok
    inst = state.instances["v1"]
    assert (inst.location, inst.moving_to, inst.power) == ("m1", "", "Running")
    assert reservations.reserved(state, "m2") == ZERO


@pytest.mark.parametrize(("running", "live"), [(False, False), (True, True)])
def test_a_vm_never_moves_to_a_member_without_qemu(running: bool, live: bool) -> None:
    state = two_members()
    state.members["m2"].instance_types = ["container"]  # m2 reported no working QEMU
    launched(state, "v1", "virtual-machine", running)
    result = begin(state, "v1", live=live)
    assert not result.ok and "does not run virtual-machine instances" in result.error
    inst = state.instances["v1"]
    assert (inst.location, inst.moving_to) == ("m1", "")
    assert reservations.reserved(state, "m2") == ZERO
