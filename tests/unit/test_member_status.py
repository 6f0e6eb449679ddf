"""Member status from heartbeats, and LXD's member view."""

from __future__ import annotations

from cluster.api.handlers.members import member_status, member_view, offline_threshold
from cluster.state.model import Member, State


def test_offline_threshold_defaults_to_10s_and_is_at_least_3s() -> None:
    state = State()
    assert offline_threshold(state) == 10.0
    state.config["cluster.offline_threshold"] = "1"
    assert offline_threshold(state) == 3.0
    state.config["cluster.offline_threshold"] = "20"
    assert offline_threshold(state) == 20.0
    state.config["cluster.offline_threshold"] = "junk"
    assert offline_threshold(state) == 10.0


def test_member_goes_offline_after_the_threshold() -> None:
    member = Member(name="m1", address="a:8443", heartbeat_at=100.0)
    assert member_status(member, 109.0, 10.0) == "ONLINE"
    assert member_status(member, 110.5, 10.0) == "OFFLINE"


def test_member_view_marks_the_leader() -> None:
    state = State()
    member = Member(name="m1", address="a:8443", raft_address="a:8444", roles=["database"],
                    heartbeat_at=100.0)
    view = member_view(state, member, "a:8444", 101.0)
    assert view["roles"] == ["database", "database-leader"]
    assert view["status"] == "Online" and view["url"] == "https://a:8443"
    assert member_view(state, member, "b:8444", 200.0)["status"] == "Offline"
