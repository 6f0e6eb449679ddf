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


def four_members() -> State:
    state = cluster_of_one()
    for name in ("m2", "m3", "m4"):
        assert join(state, name).ok
    return state


def test_member_update_sets_roles_config_groups_and_description() -> None:
    state = four_members()
    assert apply(state, cmd("member.update", name="m1", roles=[])).ok  # demote a voter
    assert apply(state, cmd("member.update", name="m4", roles=["database"],
                            config={"scheduler.instance": "manual",
                                    "scheduler.capacity.memory": "64GiB"},
                            groups=["gpu", "gpu", "ssd"], description="rack 2")).ok
    m4 = state.members["m4"]
    assert m4.roles == ["database"] and m4.groups == ["gpu", "ssd"]
    assert m4.config == {"scheduler.instance": "manual", "scheduler.capacity.memory": "64GiB"}
    assert m4.description == "rack 2"
    assert apply(state, cmd("member.update", name="m4", description="moved")).ok
    assert state.members["m4"].roles == ["database"]  # fields left out keep their value


def test_member_update_refuses_bad_input_and_changes_nothing() -> None:
    state = four_members()
    before = pickle.dumps(state.members)
    bad: list[dict[str, Any]] = [
        dict(name="m9", roles=[]),  # unknown member
        dict(name="m4", roles=["database"]),  # a fourth voter past cluster.max_voters
        dict(name="m4", roles=["admin"]),
        dict(name="m4", config={"scheduler.instance": "sometimes"}),
        dict(name="m4", config={"scheduler.capacity.cpu": "-1"}),
        dict(name="m4", config={"scheduler.capacity.memory": "lots"}),
        dict(name="m4", config={"scheduler.capacity.gpu": "1"}),
        dict(name="m4", config={"no.such.key": "1"}),
        dict(name="m4", config={"scheduler.instance": 3}),
        dict(name="m4", groups=["bad/name"]),
        dict(name="m4", groups="gpu"),
        dict(name="m4", description=7),
        dict(name="m4", roles=[], config={"scheduler.instance": "never"}),
    ]
    for args in bad:
        result = apply(state, cmd("member.update", **args))
        assert not result.ok and result.code in (400, 404), args
    assert pickle.dumps(state.members) == before


def test_the_last_voter_cannot_be_demoted() -> None:
    state = cluster_of_one()
    result = apply(state, cmd("member.update", name="m1", roles=[]))
    assert not result.ok and "last voter" in result.error


def test_raft_drift_compares_roles_with_rafts_own_voters() -> None:
    from cluster.state.apply_members import raft_drift

    state = four_members()  # voters m1, m2, m3 (raft a:1, m2:8444, m3:8444)
    assert raft_drift(state, "a:1", {"m2:8444", "m3:8444"}) == ([], [])
    assert raft_drift(state, "a:1", {"m2:8444"}) == (["m3:8444"], [])
    apply(state, cmd("member.update", name="m3", roles=[]))
    assert raft_drift(state, "a:1", {"m2:8444", "m3:8444"}) == ([], ["m3:8444"])
    apply(state, cmd("member.update", name="m4", roles=["database"]))
    assert raft_drift(state, "a:1", {"m2:8444", "m3:8444"}) == (["m4:8444"], ["m3:8444"])


def test_two_member_config_patches_made_from_one_read_both_stay() -> None:
    """PATCH merges in apply: commands built before either commits keep each other's key."""
    state = four_members()
    first = cmd("member.update", name="m4", merge_config=True,
                config={"scheduler.instance": "manual"})
    second = cmd("member.update", name="m4", merge_config=True,
                 config={"scheduler.capacity.memory": "64GiB"})
    assert apply(state, first).ok and apply(state, second).ok
    assert state.members["m4"].config == {"scheduler.instance": "manual",
                                          "scheduler.capacity.memory": "64GiB"}


def test_a_member_is_born_knowing_the_instance_types_it_runs() -> None:
    """Bootstrap and join carry the new member's instance types: a VM launched right after
    ``corral init`` must not wait for the first heartbeat to report QEMU (a CI run whose
    image build came from cache launched before it, and was refused)."""
    state = State()
    assert apply(state, cmd("cluster.bootstrap", member={
        "name": "m1", "raft_address": "a:1", "instance_types": ["virtual-machine", "container"]},
        pool={"name": "default", "driver": "dir"}, network={"name": "br0"})).ok
    assert state.members["m1"].instance_types == ["container", "virtual-machine"]
    apply(state, cmd("join_token.add", t=99.0, name="m2", secret_hash="h", expires_at=9e9))
    assert apply(state, cmd("member.join", name="m2", secret_hash="h", address="m2:8443",
                            raft_address="m2:8444",
                            instance_types=["container", "virtual-machine"])).ok
    assert state.members["m2"].instance_types == ["container", "virtual-machine"]
    assert join(state, "m3").ok  # an older joiner that reports none: containers only
    assert state.members["m3"].instance_types == ["container"]


def test_a_report_of_unknown_instance_types_keeps_what_the_member_had() -> None:
    state = cluster_of_one()
    for bad in (["container", "zone"], "virtual-machine", None, [3], [["container"]]):
        assert apply(state, cmd("member.heartbeat", name="m1", instance_types=bad)).ok
        assert state.members["m1"].instance_types == ["container"]
    assert apply(state, cmd("member.heartbeat", name="m1",
                            instance_types=["virtual-machine", "container"])).ok
    assert state.members["m1"].instance_types == ["container", "virtual-machine"]
