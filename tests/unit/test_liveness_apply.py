"""Liveness in apply: the leader's committed verdict, a compare-and-set on heartbeats, and
placement re-checked against that verdict (never against a clock)."""

from __future__ import annotations

import pickle
from typing import Any

from cluster.state.apply import apply
from cluster.state.apply_members import plan_promotions
from cluster.state.commands import Command
from cluster.state.model import Member, State

FP = "a" * 64
BIG = {"cpu": 1024, "memory": 2.0**50, "disk": 2.0**50}
_ids = iter(range(10**6))


def cmd(type_: str, t: float = 1000.0, **args: Any) -> Command:
    return Command(id=f"c{next(_ids)}", type=type_, args=args, time=t)


def two_members() -> State:
    state = State()
    assert apply(state, cmd("cluster.bootstrap", member={"name": "m1", "capacity": BIG},
                            pool={"name": "default", "driver": "dir"},
                            network={"name": "br0"})).ok
    assert apply(state, cmd("join_token.add", name="m2", secret_hash="h",
                            expires_at=5000.0)).ok
    assert apply(state, cmd("member.join", name="m2", secret_hash="h", address="m2:8443",
                            raft_address="m2:8444", capacity=BIG)).ok
    assert apply(state, cmd("image.add", fingerprint=FP, info={"type": "container"},
                            member="m1")).ok
    return state


def beat(state: State, name: str, t: float = 1000.0) -> int:
    result = apply(state, cmd("member.heartbeat", t=t, name=name))
    assert result.ok
    return int(result.value["beats"])


def liveness(state: State, name: str, status: str, beats: Any) -> Any:
    return apply(state, cmd("member.liveness", name=name, status=status, beats=beats))


def create_on(state: State, member: str, name: str, t: float = 1000.0) -> Any:
    return apply(state, cmd("instance.create", t=t, uid=f"u-{name}", name=name,
                            location=member, image=FP, profiles=["default"]))


def test_heartbeats_are_counted_and_the_count_returned() -> None:
    state = two_members()
    assert (beat(state, "m2"), beat(state, "m2")) == (1, 2)
    assert state.members["m2"].beats == 2 and state.members["m1"].beats == 0


def test_offline_commits_only_if_no_heartbeat_since_the_verdict() -> None:
    state = two_members()
    judged = beat(state, "m2")
    beat(state, "m2")  # overtakes the verdict: the member is alive after all
    before = pickle.dumps(state.members)
    stale = liveness(state, "m2", "OFFLINE", judged)
    assert stale.code == 409 and pickle.dumps(state.members) == before
    assert liveness(state, "m2", "OFFLINE", judged + 1).ok
    assert state.members["m2"].liveness == "OFFLINE"
    assert state.members["m2"].liveness_beats == judged + 1


def test_online_needs_a_heartbeat_newer_than_the_offline_verdict() -> None:
    state = two_members()
    judged = beat(state, "m2")
    assert liveness(state, "m2", "OFFLINE", judged).ok
    assert liveness(state, "m2", "ONLINE", judged).code == 409  # a deposed leader's view
    assert liveness(state, "m2", "ONLINE", judged + 1).code == 409  # not committed yet
    assert state.members["m2"].liveness == "OFFLINE"
    newer = beat(state, "m2")
    assert liveness(state, "m2", "ONLINE", newer).ok
    assert state.members["m2"].liveness == "ONLINE"


def test_repeated_verdict_is_a_no_op_and_bad_input_changes_nothing() -> None:
    state = two_members()
    assert liveness(state, "m2", "ONLINE", 0).ok
    before = pickle.dumps(state.members)
    for bad in [("m9", "OFFLINE", 0), ("m2", "GONE", 0), ("m2", "OFFLINE", "0"),
                ("m2", "OFFLINE", None), ("m2", "OFFLINE", True)]:
        result = liveness(state, *bad)
        assert not result.ok and result.code in (400, 404)
    assert pickle.dumps(state.members) == before


def test_placement_is_refused_on_a_member_the_leader_committed_offline() -> None:
    state = two_members()
    beats = beat(state, "m2", t=1000.0)  # a fresh stamp: no clock says it is dead
    assert liveness(state, "m2", "OFFLINE", beats).ok
    refused = create_on(state, "m2", "c1", t=1000.5)
    assert refused.code == 409 and "c1" not in state.instances
    assert liveness(state, "m2", "ONLINE", beat(state, "m2")).ok
    assert create_on(state, "m2", "c1", t=1000.5).ok


def test_placement_accepts_an_online_member_whose_clock_is_far_behind() -> None:
    state = two_members()
    # Its clock is 30 s behind the submitter's: the stamp is never judged.
    assert apply(state, cmd("member.heartbeat", t=1000.0 - 30, name="m2")).ok
    placed = create_on(state, "m2", "c1", t=1000.0)
    assert placed.ok, placed.error


def test_promotions_follow_the_committed_status() -> None:
    state = two_members()
    state.members["m3"] = Member(name="m3", address="m3:8443", heartbeat_at=0.0)
    assert plan_promotions(state) == []  # stamps are not judged: m3 was never declared dead
    assert liveness(state, "m1", "OFFLINE", 0).ok
    assert plan_promotions(state) == [("m1", "m3")]


def test_a_member_from_an_older_snapshot_loads_online() -> None:
    old = Member(name="m1", address="a:8443")
    for key in ("liveness", "beats", "liveness_beats"):
        del old.__dict__[key]
    loaded = pickle.loads(pickle.dumps(old))
    assert (loaded.liveness, loaded.beats, loaded.liveness_beats) == ("ONLINE", 0, 0)
