"""Member status as the leader committed it, and LXD's member view."""

from __future__ import annotations

from cluster.api.handlers.members import member_status, member_view, offline_threshold
from cluster.state.model import Member, State
from corral_cli.cluster_cmds import usage
from corral_shared.resources import GiB, MiB, Resources


def test_offline_threshold_defaults_to_4s_and_is_at_least_3s() -> None:
    state = State()
    assert offline_threshold(state) == 4.0
    state.config["cluster.offline_threshold"] = "1"
    assert offline_threshold(state) == 3.0
    state.config["cluster.offline_threshold"] = "20"
    assert offline_threshold(state) == 20.0
    state.config["cluster.offline_threshold"] = "junk"
    assert offline_threshold(state) == 4.0


def test_member_status_is_what_the_leader_committed_whatever_the_heartbeat_stamp() -> None:
    member = Member(name="m1", address="a:8443", heartbeat_at=100.0)
    assert member_status(member) == "ONLINE"
    member.liveness = "OFFLINE"
    assert member_status(member) == "OFFLINE"
    member.state = "EVACUATED"
    assert member_status(member) == "EVACUATED"


def test_member_view_marks_the_leader() -> None:
    state = State()
    member = Member(name="m1", address="a:8443", raft_address="a:8444", roles=["database"],
                    heartbeat_at=100.0)
    view = member_view(state, member, "a:8444")
    assert view["roles"] == ["database", "database-leader"]
    assert view["status"] == "Online" and view["url"] == "https://a:8443"
    member.liveness = "OFFLINE"
    offline = member_view(state, member, "b:8444")
    assert offline["status"] == "Offline" and "4s" in offline["message"]


def test_member_view_shows_capacity_ratio_schedulable_and_used() -> None:
    state = State()
    state.members["m1"] = member = Member(
        name="m1", address="a:8443", heartbeat_at=100.0,
        capacity={"cpu": 2.0, "memory": 4.0 * GiB})  # disk not reported
    state.config["scheduler.memory_allocation_ratio"] = "1.5"
    state.reserved = {"m1": Resources(2, 128 * MiB, 512 * MiB)}
    placement = member_view(state, member, None)["placement"]
    assert placement == {
        "cpu": {"capacity": 2.0, "allocation_ratio": 16.0, "schedulable": 32.0, "used": 2},
        "memory": {"capacity": 4 * GiB, "allocation_ratio": 1.5, "schedulable": 6 * GiB,
                   "used": 128 * MiB},
        "disk": {"capacity": None, "allocation_ratio": 1.0, "schedulable": None,
                 "used": 512 * MiB}}
    listed = {"placement": placement}
    assert (usage(listed, "cpu"), usage(listed, "memory"), usage(listed, "disk")) == (
        "2/32", "128.00MiB/6.00GiB", "512.00MiB/?")
    assert usage({}, "cpu") == ""  # a server without the field
