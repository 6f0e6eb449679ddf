"""Which instances a committed creation wakes the member's agent for."""

from __future__ import annotations

from cluster.state.commands import Command
from node_agent.agent import created_uids


def test_a_single_create_wakes_its_instance() -> None:
    cmd = Command(id="1", type="instance.create", args={"uid": "u1", "location": "m2"})
    assert created_uids(cmd, "m1") == ["u1"]  # its worker checks the location itself
    assert created_uids(Command(id="2", type="instance.create", args={}), "m1") == []


def test_a_plan_wakes_only_this_members_part() -> None:
    items = [{"uid": "u1", "location": "m1"}, {"uid": "u2", "location": "m2"},
             {"uid": "u3", "location": "m1"}, {"location": "m1"}, "not a mapping"]
    cmd = Command(id="3", type="instance.create_many", args={"items": items})
    assert created_uids(cmd, "m1") == ["u1", "u3"]
    assert created_uids(cmd, "m2") == ["u2"]
