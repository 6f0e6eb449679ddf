"""The pure state machine: validation, idempotency, determinism, no change on refusal."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.state import apply as apply_module
from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.model import State

FP = "a" * 64
BIG = {"cpu": 1024, "memory": 2.0**50, "disk": 2.0**50}  # room for any test


def cmd(type_: str, id_: str | None = None, t: float = 1.0, **args: Any) -> Command:
    return Command(id=id_ or f"{type_}-{sorted(args.items())!r}-{t}", type=type_, args=args,
                   time=t)


def bootstrapped() -> State:
    state = State()
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "capacity": BIG},
                            pool={"name": "default", "driver": "dir"},
                            network={"name": "br0"})).ok
    assert apply(state, cmd("image.add", fingerprint=FP, info={"type": "container"},
                            member="m1")).ok
    return state


def create(state: State, name: str, uid: str = "", **extra: Any) -> Any:
    args = {"location": "m1", "image": FP, "profiles": ["default"], **extra}
    return apply(state, cmd("instance.create", uid=uid or f"u-{name}", name=name, **args))


def test_bootstrap_makes_member_pool_network_and_default_profile() -> None:
    state = bootstrapped()
    assert list(state.members) == ["m1"]
    assert state.profiles["default"].devices["root"] == {"type": "disk", "path": "/",
                                                         "pool": "default"}
    assert not apply(state, cmd("cluster.bootstrap", id_="again", member={"name": "m2"},
                                pool={}, network={})).ok


def test_create_wants_it_made_and_running() -> None:
    """The create and the start are desired state (not yet created, Running), not
    queued; the agent's report of creating it settles both."""
    state = bootstrapped()
    result = create(state, "c1", start=True)
    assert result.ok and result.value["generation"] == 2
    inst = state.instances["c1"]
    assert inst.pending == [] and not inst.observed.created
    assert inst.power == "Running" and inst.busy
    apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running",
                     created=True))
    assert inst.observed.created and not inst.busy


def test_retried_command_is_applied_once() -> None:
    state = bootstrapped()
    first = apply(state, cmd("instance.create", id_="same", uid="u1", name="c1",
                             location="m1", image=FP, profiles=["default"]))
    again = apply(state, cmd("instance.create", id_="same", uid="u1", name="c1",
                             location="m1", image=FP, profiles=["default"]))
    assert first == again and first.ok
    assert len(state.instances) == 1


BAD_CREATES: list[tuple[dict[str, Any], int]] = [
    ({"name": "1abc"}, 400), ({"name": "-x"}, 400), ({"name": "x" * 64}, 400),
    ({"name": "a_b"}, 400), ({"name": "ok", "config": {"limits.memory": "lots"}}, 400),
    ({"name": "ok", "config": {"bogus.key": "1"}}, 400),
    ({"name": "ok", "config": {"limits.cpu": "0"}}, 400),
    ({"name": "ok", "profiles": ["missing"]}, 400),
    ({"name": "ok", "image": "b" * 64}, 404),
    ({"name": "ok", "devices": {"x": {"type": "usb"}}}, 400),
    ({"name": "ok", "profiles": []}, 400),  # no root disk
]


def test_invalid_creates_are_refused_and_change_nothing() -> None:
    for overrides, code in BAD_CREATES:
        state = bootstrapped()
        before = pickle.dumps((state.instances, state.images, state.profiles))
        args: dict[str, Any] = {"uid": "u", "name": "ok", "location": "m1", "image": FP,
                "profiles": ["default"], **overrides}
        result = apply(state, cmd("instance.create", **args))
        assert not result.ok and result.code == code, (overrides, result)
        assert pickle.dumps((state.instances, state.images, state.profiles)) == before


def test_duplicate_name_conflicts() -> None:
    state = bootstrapped()
    assert create(state, "c1").ok
    result = create(state, "c1", uid="other")
    assert not result.ok and result.code == 409


def test_failed_create_report_removes_the_instance() -> None:
    state = bootstrapped()
    create(state, "c1")
    apply(state, cmd("instance.observed", uid="u-c1", generation=1, status="Stopped",
                     error="disk full"))
    assert "c1" not in state.instances


def test_observed_pops_actions_in_order_and_records_errors() -> None:
    """A failed pass that covers every change settles the desired power on what was seen
    (nothing is retried); a report of an earlier generation does not."""
    state = bootstrapped()
    create(state, "c1", start=True)
    apply(state, cmd("instance.observed", uid="u-c1", generation=1, status="Stopped"))
    inst = state.instances["c1"]
    assert inst.pending == [] and inst.power == "Running" and inst.busy
    apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Stopped",
                     error="boom"))
    assert inst.results[2] == "boom" and inst.power == "Stopped" and not inst.busy


def test_power_actions_are_desired_state_with_a_restart_counter() -> None:
    state = bootstrapped()
    create(state, "c1", start=True)
    apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running",
                     host="m1/boot"))
    inst = state.instances["c1"]
    assert (inst.observed.host, inst.boots, inst.power_args) == ("m1/boot", 0, None)
    stop = apply(state, cmd("instance.action", name="c1", action="stop", force=True,
                            timeout=5))
    assert stop.ok and inst.pending == [] and inst.power == "Stopped"
    assert inst.power_args == {"force": True, "timeout": 5.0}
    start = apply(state, cmd("instance.action", name="c1", action="start", t=2.0))
    restart = apply(state, cmd("instance.action", name="c1", action="restart", t=3.0))
    assert restart.value["generation"] == start.value["generation"] + 1 == 5
    assert (inst.power, inst.boots, inst.power_args, inst.pending) == ("Running", 1, None, [])
    apply(state, cmd("instance.observed", uid="u-c1", generation=5, status="Running",
                     boots=1))
    assert not inst.busy and inst.observed.boots == 1
    again = apply(state, cmd("instance.action", name="c1", action="restart", t=4.0))
    apply(state, cmd("instance.observed", uid="u-c1", generation=again.value["generation"],
                     status="Stopped", boots=1, error="no"))
    assert (inst.power, inst.boots) == ("Stopped", 1)  # the failed restart is not retried


def test_delete_of_running_instance_needs_force_and_report_removes_it() -> None:
    state = bootstrapped()
    create(state, "c1", start=True)
    assert apply(state, cmd("instance.delete", name="c1")).code == 400
    result = apply(state, cmd("instance.delete", name="c1", force=True))
    assert result.ok
    apply(state, cmd("instance.observed", uid="u-c1", generation=result.value["generation"],
                     status="Stopped"))
    assert "c1" not in state.instances


def test_snapshot_lifecycle() -> None:
    state = bootstrapped()
    create(state, "c1")
    gen = apply(state, cmd("instance.snapshot", name="c1", snapshot="s0")).value["generation"]
    assert not state.instances["c1"].snapshots["s0"].ready
    assert apply(state, cmd("instance.restore", name="c1", snapshot="s0")).code == 404
    apply(state, cmd("instance.observed", uid="u-c1", generation=gen, status="Stopped",
                     snapshots=[["snapshot", gen, "s0", ""]]))
    assert state.instances["c1"].snapshots["s0"].ready
    assert apply(state, cmd("instance.snapshot", id_="dup", name="c1", snapshot="s0")).code == 409
    assert apply(state, cmd("instance.snapshot", name="c1", snapshot="a/b")).code == 400
    assert apply(state, cmd("instance.restore", t=2.0, name="c1", snapshot="s0")).ok


def _report(state: State, generation: int, error: str = "", **steps: Any) -> None:
    apply(state, cmd("instance.observed", uid="u-c1", generation=generation,
                     status="Stopped", error=error, created=True, **steps))


def test_a_failed_snapshot_step_settles_as_lxd_leaves_a_failed_operation() -> None:
    """A take that failed leaves no record, a delete that failed shows the snapshot
    again, a rename that failed gives it back its old name (kept free meanwhile), and a
    restore asked follows its snapshot's rename."""
    state = bootstrapped()
    create(state, "c1")
    inst = state.instances["c1"]
    take = apply(state, cmd("instance.snapshot", name="c1", snapshot="s0")).value["generation"]
    _report(state, take, "disk full", snapshot_failed=["snapshot", take, "s0", ""])
    assert inst.snapshots == {} and inst.results[take] == "disk full"
    take = apply(state, cmd("instance.snapshot", name="c1", snapshot="a")).value["generation"]
    _report(state, take, snapshots=[["snapshot", take, "a", ""]])
    restore = apply(state, cmd("instance.restore", name="c1", snapshot="a")).value[
        "generation"]
    rename = apply(state, cmd("instance.snapshot_rename", name="c1", snapshot="a",
                              new_name="b")).value["generation"]
    assert (inst.restore_gen, inst.restore_snap, inst.snapshots["b"].local) == (
        restore, "b", "a")
    assert apply(state, cmd("instance.snapshot", id_="a2", name="c1", snapshot="a")).code == 409
    _report(state, rename, "busy", snapshots=[["restore", restore, "b", "a"]],
            snapshot_failed=["snapshot_rename", rename, "b", "a"])
    assert list(inst.snapshots) == ["a"] and inst.snapshots["a"].local == ""
    assert inst.observed.restore_gen == restore and inst.restore_snap == "a"
    delete = apply(state, cmd("instance.snapshot_delete", name="c1", snapshot="a")).value[
        "generation"]
    assert not inst.snapshots["a"].shown
    assert apply(state, cmd("instance.restore", id_="r2", name="c1", snapshot="a")).code == 404
    _report(state, delete, "in use", snapshot_failed=["snapshot_delete", delete, "a", ""])
    assert inst.snapshots["a"].shown
    delete = apply(state, cmd("instance.snapshot_delete", id_="d2", name="c1",
                              snapshot="a")).value["generation"]
    _report(state, delete, snapshots=[["snapshot_delete", delete, "a", ""], "junk"])
    assert inst.snapshots == {} and not inst.busy


def test_renames_of_a_snapshot_pile_up_into_one_and_back_to_none() -> None:
    state = bootstrapped()
    create(state, "c1")
    inst = state.instances["c1"]
    take = apply(state, cmd("instance.snapshot", name="c1", snapshot="a")).value["generation"]
    _report(state, take, snapshots=[["snapshot", take, "a", ""]])
    for old, new in (("a", "b"), ("b", "c")):
        assert apply(state, cmd("instance.snapshot_rename", name="c1", snapshot=old,
                                new_name=new)).ok
    assert list(inst.snapshots) == ["c"] and inst.snapshots["c"].local == "a"
    assert apply(state, cmd("instance.snapshot_rename", name="c1", snapshot="c",
                            new_name="a")).ok
    assert list(inst.snapshots) == ["a"] and inst.snapshots["a"].local == ""


def test_rename_requires_stopped_and_free_name() -> None:
    state = bootstrapped()
    create(state, "c1")
    create(state, "c2")
    assert apply(state, cmd("instance.rename", name="c1", new_name="c2")).code == 409
    assert apply(state, cmd("instance.rename", name="c1", new_name="9x")).code == 400
    assert apply(state, cmd("instance.rename", name="c1", new_name="c3")).ok
    assert "c3" in state.instances and "c1" not in state.instances


def test_profile_rules() -> None:
    state = bootstrapped()
    assert apply(state, cmd("profile.delete", name="default")).code == 400
    assert apply(state, cmd("profile.create", name="p1", config={"limits.cpu": "1"})).ok
    assert apply(state, cmd("profile.create", id_="x", name="p1")).code == 409
    create(state, "c1", profiles=["default", "p1"])
    assert apply(state, cmd("profile.delete", name="p1")).code == 400


def test_unknown_command_and_newer_version_are_refused() -> None:
    state = bootstrapped()
    assert apply(state, cmd("no.such")).code == 400
    newer = Command(id="v", type="config.set", args={"config": {}}, time=0, ver=99)
    assert apply(state, newer).code == 400


def test_apply_never_raises_on_garbage() -> None:
    state = bootstrapped()
    result = apply(state, cmd("instance.create", uid=None, name=None))
    assert not result.ok


names = st.sampled_from(["c1", "c2", "c3"])
snaps = st.sampled_from(["s0", "s1", "s2"])
commands = st.one_of(
    st.builds(lambda n, s: ("instance.create", {"uid": f"u-{n}", "name": n, "location": "m1",
                                                "image": FP, "profiles": ["default"],
                                                "start": s}), names, st.booleans()),
    st.builds(lambda n, a: ("instance.action", {"name": n, "action": a}), names,
              st.sampled_from(["start", "stop", "restart", "freeze", "bogus"])),
    st.builds(lambda n, f: ("instance.delete", {"name": n, "force": f}), names, st.booleans()),
    st.builds(lambda n, g, e: ("instance.observed", {"uid": f"u-{n}", "generation": g,
                                                     "status": "Running", "error": e}),
              names, st.integers(0, 6), st.sampled_from(["", "err"])),
    st.builds(lambda n, s: ("instance.snapshot", {"name": n, "snapshot": s}), names,
              st.sampled_from(["s0", "s1", "bad/name"])),
    st.builds(lambda n, m: ("instance.rename", {"name": n, "new_name": m}), names, names),
    st.builds(lambda n, s, m: ("instance.snapshot_rename", {"name": n, "snapshot": s,
                                                            "new_name": m}),
              names, snaps, snaps),
    st.builds(lambda n, s: ("instance.snapshot_delete", {"name": n, "snapshot": s}), names,
              snaps),
    st.builds(lambda n, s: ("instance.restore", {"name": n, "snapshot": s}), names, snaps),
    st.builds(lambda n, g, steps, e: ("instance.observed", {
        "uid": f"u-{n}", "generation": g, "status": "Stopped", "error": e,
        "snapshots": steps[1:], "snapshot_failed": steps[0] if e else None}),
        names, st.integers(0, 9), st.lists(st.tuples(
            st.sampled_from(["snapshot", "snapshot_delete", "snapshot_rename", "restore"]),
            st.integers(0, 9), snaps, st.sampled_from(["", "s0", "s1"])).map(list),
            min_size=1, max_size=3), st.sampled_from(["", "err"])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=30))
def test_replicas_agree_and_refusals_change_nothing(ops: list[tuple[str, dict[str, Any]]]) -> None:
    a, b = bootstrapped(), bootstrapped()
    for i, (type_, args) in enumerate(ops):
        command = Command(id=f"c{i}", type=type_, args=args, time=float(i))
        before = pickle.dumps(a.instances)
        result = apply(a, command)
        apply(b, command)
        if not result.ok:
            assert pickle.dumps(a.instances) == before
        assert result.code != 500, result
    assert pickle.dumps(a.instances) == pickle.dumps(b.instances)


def test_a_retry_within_the_horizon_is_answered_even_past_the_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At thousands of commands per second a retry may come more than RECENT_COMMANDS
    later: within RETRY_HORIZON seconds it still gets the first result, not a second
    apply; results older than that are forgotten once over the count."""
    monkeypatch.setattr(apply_module, "RECENT_COMMANDS", 3)
    state = bootstrapped()
    first = apply(state, cmd("profile.create", id_="p0", t=1.0, name="p0"))
    for i in range(1, 10):
        assert apply(state, cmd("profile.create", id_=f"p{i}", t=2.0, name=f"p{i}")).ok
    again = apply(state, cmd("profile.create", id_="p0", t=3.0, name="p0"))
    assert first.ok and again == first  # not "already exists"
    late = 1.0 + apply_module.RETRY_HORIZON + 1
    assert apply(state, cmd("profile.create", id_="q", t=late, name="q")).ok
    assert len(state.recent) == 3  # the old results went
    assert not apply(state, cmd("profile.create", id_="p0", t=late, name="p0")).ok


def test_stateful_stop_and_start_of_containers() -> None:
    """LXD's stop --stateful / start: only containers with migration.stateful=true; the
    instance reads stateful once the agent reports the dump, and a start consumes it."""
    state = bootstrapped()
    create(state, "plain", start=True)
    refused = apply(state, cmd("instance.action", name="plain", action="stop", stateful=True))
    assert refused.code == 400 and "migration.stateful=true" in refused.error
    assert state.instances["plain"].generation == 2

    create(state, "c1", start=True, config={"migration.stateful": "true"})
    apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running"))
    assert apply(state, cmd("instance.action", name="c1", action="restart",
                            stateful=True)).code == 400
    assert apply(state, cmd("instance.action", name="c1", action="start",
                            stateful=True)).code == 400  # nothing saved yet
    stop = apply(state, cmd("instance.action", name="c1", action="stop", stateful=True))
    inst = state.instances["c1"]
    assert stop.ok and inst.power_args == {"stateful": True} and not inst.stateful
    apply(state, cmd("instance.observed", uid="u-c1", generation=stop.value["generation"],
                     status="Stopped"))
    assert inst.stateful and inst.power == "Stopped"
    start = apply(state, cmd("instance.action", name="c1", action="start", stateful=True,
                             t=2.0))  # not a retry of the refused one
    assert start.ok and inst.power_args == {"stateful": True}
    apply(state, cmd("instance.observed", uid="u-c1", generation=start.value["generation"],
                     status="Running"))
    assert not inst.stateful and inst.power_args is None  # restored once, not at a reboot


def test_a_failed_stateful_stop_leaves_it_running_and_not_stateful() -> None:
    state = bootstrapped()
    create(state, "c1", start=True, config={"migration.stateful": "true"})
    apply(state, cmd("instance.observed", uid="u-c1", generation=2, status="Running"))
    stop = apply(state, cmd("instance.action", name="c1", action="stop", stateful=True))
    apply(state, cmd("instance.observed", uid="u-c1", generation=stop.value["generation"],
                     status="Running", error="checkpoint failed"))
    inst = state.instances["c1"]
    assert inst.power == "Running" and not inst.stateful


def test_stateful_comes_from_profiles_too() -> None:
    state = bootstrapped()
    assert apply(state, cmd("profile.create", name="live",
                            config={"migration.stateful": "true"})).ok
    create(state, "c1", start=True, profiles=["default", "live"])
    assert apply(state, cmd("instance.action", name="c1", action="stop", stateful=True)).ok
