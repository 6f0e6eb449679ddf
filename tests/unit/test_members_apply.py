"""Cluster membership in apply: join tokens, joining, voters, roles and removal."""

from __future__ import annotations

import pickle
from typing import Any

from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.model import State

_ids = iter(range(10**6))


def cmd(type_: str, t: float = 100.0, **args: Any) -> Command:
    return Command(id=f"c{next(_ids)}", type=type_, args=args, time=t)


def cluster_of_one() -> State:
    state = State()
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "raft_address": "a:1"},
                            pool={"name": "default", "driver": "dir"},
                            network={"name": "br0"})).ok
    return state


def join(state: State, name: str, secret: str = "h", t: float = 100.0,
         address: str | None = None) -> Any:
    apply(state, cmd("join_token.add", t=t - 1, name=name, secret_hash="h",
                     expires_at=t + 3600))
    return apply(state, cmd("member.join", t=t, name=name, secret_hash=secret,
                            address=address or f"{name}:8443", raft_address=f"{name}:8444"))


def test_founder_is_the_only_voter() -> None:
    state = cluster_of_one()
    assert state.members["m1"].roles == ["database"]


def test_members_join_as_voters_up_to_max_then_as_followers() -> None:
    state = cluster_of_one()
    for name in ("m2", "m3", "m4"):
        assert join(state, name).ok
    assert [m.name for m in state.members.values() if "database" in m.roles] == [
        "m1", "m2", "m3"]
    assert state.members["m4"].roles == []
    assert state.join_tokens == {}


def test_join_token_is_single_use_expires_and_needs_the_secret() -> None:
    state = cluster_of_one()
    apply(state, cmd("join_token.add", name="m2", secret_hash="good", expires_at=200.0))
    before = pickle.dumps(state.members)
    forged = apply(state, cmd("member.join", name="m2", secret_hash="bad",
                              address="x:1", raft_address="x:2"))
    assert forged.code == 403 and pickle.dumps(state.members) == before
    late = apply(state, cmd("member.join", t=201.0, name="m2", secret_hash="good",
                            address="x:1", raft_address="x:2"))
    assert late.code == 403 and "expired" in late.error
    assert apply(state, cmd("member.join", t=150.0, name="m2", secret_hash="good",
                            address="x:1", raft_address="x:2")).ok
    again = apply(state, cmd("member.join", t=151.0, name="m2", secret_hash="good",
                             address="y:1", raft_address="y:2"))
    assert again.code == 403


def test_names_and_addresses_in_use_are_refused() -> None:
    state = cluster_of_one()
    assert apply(state, cmd("join_token.add", name="m1", secret_hash="h",
                            expires_at=500.0)).code == 409
    assert apply(state, cmd("join_token.add", name="9bad", secret_hash="h",
                            expires_at=500.0)).code == 400
    assert join(state, "m2").ok
    clash = join(state, "m3", address="m2:8443")
    assert clash.code == 409 and "m3" not in state.members


def test_last_voter_is_not_removed_without_force() -> None:
    state = cluster_of_one()
    assert apply(state, cmd("member.remove", name="m1")).code == 400
    assert join(state, "m2").ok
    assert apply(state, cmd("member.remove", name="m2")).ok
    assert apply(state, cmd("member.remove", name="m1", force=True)).ok
    assert apply(state, cmd("member.remove", name="nope")).code == 404


def test_roles_respect_the_voter_limit() -> None:
    state = cluster_of_one()
    for name in ("m2", "m3", "m4"):
        join(state, name)
    assert apply(state, cmd("member.roles", name="m4", roles=["database"])).code == 400
    assert apply(state, cmd("member.roles", name="m3", roles=[])).ok
    assert apply(state, cmd("member.roles", name="m4", roles=["database"])).ok
    assert apply(state, cmd("member.roles", name="m4", roles=["bogus"])).code == 400
