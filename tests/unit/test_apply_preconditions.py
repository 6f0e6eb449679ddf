"""Preconditions live in apply: ``If-Match`` is checked against the committed record and
PATCH merges into it, so a conflict is a 412 that changes nothing and two concurrent
PATCHes of different keys both survive."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.api import views
from cluster.state import etags
from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.model import State
from tests.unit.test_apply import bootstrapped, cmd, create


def with_instance_and_profile() -> State:
    state = bootstrapped()
    assert create(state, "c1", config={"user.a": "1"}).ok
    assert apply(state, cmd("profile.create", name="p1", config={"user.a": "1"})).ok
    return state


def records(state: State) -> tuple[Any, ...]:
    return copy.deepcopy((state.instances, state.profiles, state.reserved))


def test_the_instance_etag_is_the_one_get_has_always_sent() -> None:
    """The hash of the view's writable fields, as the API computed it before apply did."""
    state = with_instance_and_profile()
    inst = state.instances["c1"]
    view = views.instance(state, inst, "Stopped")
    keys = ("architecture", "config", "devices", "ephemeral", "profiles", "description")
    old = hashlib.sha256(json.dumps({k: view[k] for k in keys}, sort_keys=True)
                         .encode()).hexdigest()
    assert etags.instance(inst) == old
    assert etags.instance(copy.deepcopy(inst)) == old  # nothing but the record counts


@pytest.mark.parametrize("kind", ["instance.update", "instance.patch", "profile.update",
                                  "profile.patch"])
def test_a_stale_if_match_is_a_412_and_changes_nothing(kind: str) -> None:
    state = with_instance_and_profile()
    name = "p1" if kind.startswith("profile") else "c1"
    before = records(state)
    result = apply(state, cmd(kind, name=name, config={"user.b": "2"}, devices={},
                              if_match="0" * 64))
    assert (result.ok, result.code) == (False, 412)
    assert result.error.startswith("ETag doesn't match")
    assert records(state) == before


@pytest.mark.parametrize("kind", ["instance.update", "instance.patch", "profile.update",
                                  "profile.patch"])
def test_the_current_if_match_lets_the_change_through(kind: str) -> None:
    state = with_instance_and_profile()
    profile = kind.startswith("profile")
    etag = etags.profile(state.profiles["p1"]) if profile else etags.instance(
        state.instances["c1"])
    result = apply(state, cmd(kind, name="p1" if profile else "c1", config={"user.b": "2"},
                              devices={}, if_match=etag))
    assert result.ok, result.error
    record = state.profiles["p1"] if profile else state.instances["c1"]
    assert record.config.get("user.b") == "2"


def test_a_put_built_on_an_old_read_is_refused_after_a_patch() -> None:
    """The lost update of issue 13: read (ETag e0), someone PATCHes, PUT with e0."""
    state = with_instance_and_profile()
    seen = etags.instance(state.instances["c1"])
    assert apply(state, cmd("instance.patch", name="c1", config={"user.b": "2"})).ok
    put = apply(state, cmd("instance.update", name="c1", config={"user.a": "9"}, devices={},
                           if_match=seen))
    assert put.code == 412
    assert state.instances["c1"].config["user.b"] == "2"


@pytest.mark.parametrize("kind", ["instance.patch", "profile.patch"])
def test_two_patches_of_different_keys_made_from_one_read_both_survive(kind: str) -> None:
    """Both commands are built before either commits (as two API calls on two members
    would be); applied in sequence, neither loses the other's key."""
    state = with_instance_and_profile()
    name = "p1" if kind == "profile.patch" else "c1"
    first = cmd(kind, id_="first", name=name, config={"user.b": "2"})
    second = cmd(kind, id_="second", name=name, config={"user.c": "3"},
                 devices={"eth1": {"type": "nic", "network": "br0", "name": "eth1"}})
    assert apply(state, first).ok and apply(state, second).ok
    record = state.profiles[name] if kind == "profile.patch" else state.instances[name]
    assert {k: record.config[k] for k in ("user.a", "user.b", "user.c")} == {
        "user.a": "1", "user.b": "2", "user.c": "3"}
    assert "eth1" in record.devices


def test_a_patch_keeps_what_it_does_not_name() -> None:
    state = with_instance_and_profile()
    inst = state.instances["c1"]
    inst.config["volatile.eth0.hwaddr"] = "00:16:3e:00:00:01"
    inst.description, inst.ephemeral = "kept", True
    assert apply(state, cmd("instance.patch", name="c1", config={"user.b": "2"})).ok
    assert inst.config == {"user.a": "1", "user.b": "2",
                           "volatile.eth0.hwaddr": "00:16:3e:00:00:01"}
    assert (inst.description, inst.ephemeral, inst.profiles) == ("kept", True, ["default"])


def test_a_put_without_profiles_keeps_the_committed_ones() -> None:
    state = with_instance_and_profile()
    assert apply(state, cmd("instance.update", name="c1", config={}, devices={},
                            profiles=["default", "p1"])).ok
    assert apply(state, cmd("instance.update", name="c1", id_="again", config={},
                            devices={})).ok
    assert state.instances["c1"].profiles == ["default", "p1"]


@pytest.mark.parametrize("args", [{"config": "x"}, {"config": {"user.a": 1}},
                                  {"devices": []}, {"if_match": 5}])
def test_a_malformed_patch_is_refused_and_changes_nothing(args: dict[str, Any]) -> None:
    state = with_instance_and_profile()
    before = records(state)
    for kind, name in (("instance.patch", "c1"), ("profile.patch", "p1")):
        result = apply(state, cmd(kind, name=name, **args))
        assert not result.ok and result.code in (400, 412)
    assert records(state) == before


KEYS = st.sampled_from([f"user.k{n}" for n in range(5)])


@settings(max_examples=60, deadline=None)
@given(patches=st.lists(st.tuples(st.sampled_from(["instance.patch", "profile.patch"]),
                                  st.dictionaries(KEYS, st.text("ab", max_size=3),
                                                  max_size=3)), max_size=8))
def test_patches_applied_in_any_number_add_up_to_their_merge(
        patches: list[tuple[str, dict[str, str]]]) -> None:
    """Every PATCH is built without a read (only the keys it sets): the committed config
    is always the in-order merge of all of them."""
    state = with_instance_and_profile()
    wanted = {"instance.patch": {"user.a": "1"}, "profile.patch": {"user.a": "1"}}
    for n, (kind, config) in enumerate(patches):
        name = "p1" if kind == "profile.patch" else "c1"
        assert apply(state, Command(id=f"patch-{n}", type=kind, time=2.0,
                                    args={"name": name, "config": config})).ok
        wanted[kind].update(config)
    assert state.instances["c1"].config == wanted["instance.patch"]
    assert state.profiles["p1"].config == wanted["profile.patch"]


def test_two_server_config_patches_made_from_one_read_both_stay() -> None:
    state = bootstrapped()
    first = cmd("config.set", id_="first", merge=True, config={"user.one": "1"})
    second = cmd("config.set", id_="second", merge=True, config={"user.two": "2"})
    assert apply(state, first).ok and apply(state, second).ok
    assert {"user.one": "1", "user.two": "2"}.items() <= state.config.items()
    assert apply(state, cmd("config.set", config={"user.two": "3"})).ok  # PUT replaces
    assert state.config == {"user.two": "3"}
