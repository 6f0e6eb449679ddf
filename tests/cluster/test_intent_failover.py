"""Moves and evacuations are intents the Raft leader's controllers drive, so they outlive
the death of any one member (kill -9 of its daemon):

- the leader dies while it evacuates a member of 3 running containers: the new leader
  finishes the evacuation (all 3 run on the remaining member, once each; the member is
  EVACUATED), and the client follows the operation on any member;
- the member that took the evacuation request dies (not the leader): the same;
- the leader dies during a cold move: the move ends done or cleanly undone, the instance
  running exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.integration.api import Api

pytestmark = pytest.mark.real
NAMES = ("f1", "f2", "f3")


@pytest.fixture(scope="module")
def members() -> Iterator[list[DaemonProcess]]:
    with namespace_cluster(3) as started:
        started[0].corral("image", "build", "busybox", timeout=300)
        yield started


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


def _raft(member: DaemonProcess) -> dict[str, Any]:
    status, doc = Api(str(member.socket)).call("GET", "/1.0/cluster/raft")
    assert status == 200, doc
    return dict(doc["metadata"])


def _roles(members: list[DaemonProcess]) -> tuple[int, int, int]:
    """(leader, the member to evacuate, the third), once the three agree on a leader."""
    views: list[dict[str, Any]] = []

    def agreed() -> bool:
        views[:] = [_raft(m) for m in members]
        return (len({v["leader"] for v in views}) == 1 and views[0]["leader"] is not None
                and sum(v["role"] == "leader" for v in views) == 1)

    _until(agreed, 60, "the members agree on a leader")
    leader = next(i for i, v in enumerate(views) if v["role"] == "leader")
    evacuated, third = [i for i in range(3) if i != leader]
    return leader, evacuated, third


def _name(index: int) -> str:
    return f"m{index + 1}"


def _instances(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    listed = Api(str(daemon.socket)).get("/1.0/instances?recursion=1")
    return {i["name"]: i for i in listed}


def _copies(members: list[DaemonProcess], name: str) -> list[str]:
    """The members whose pool holds a volume of container ``name``."""
    return [_name(i) for i, m in enumerate(members)
            if (m.root / "storage-pools" / "default" / "containers" / name).exists()]


def _operations(daemon: DaemonProcess) -> list[dict[str, Any]]:
    status, doc = Api(str(daemon.socket)).call("GET", "/1.0/operations?recursion=1")
    assert status == 200, doc
    return [op for group in (doc["metadata"] or {}).values() for op in group]


def _wait_op(daemon: DaemonProcess, op_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = Api(str(daemon.socket)).call(
            "GET", f"/1.0/operations/{op_id}/wait?timeout=5")
        assert status == 200, doc
        op: dict[str, Any] = doc["metadata"]
        if op["status"] not in ("Running", "Cancelling"):
            return op
        assert time.monotonic() < deadline, f"operation {op_id} still {op['status']}: {op}"


def _restart(member: DaemonProcess) -> None:
    member.start(timeout=120)


def _launch_on(member: DaemonProcess, where: str) -> None:
    for name in NAMES:
        member.corral("launch", "busybox", name, "--target", where)


def _evacuate_while_killing(members: list[DaemonProcess], taker: int, killed: int,
                            survivor: int, evacuated: int) -> None:
    """Evacuate ``evacuated`` through ``taker``; kill -9 ``killed`` as soon as the
    leader's controller has started the moves; follow the operation on ``survivor``."""
    api = Api(str(members[taker].socket))
    status, doc = api.call("POST", f"/1.0/cluster/members/{_name(evacuated)}/state",
                           {"action": "evacuate"})
    assert status == 202, doc
    op_id = doc["metadata"]["id"]
    deadline = time.monotonic() + 5  # the kill comes whether or not any move shows
    while time.monotonic() < deadline and not any(
            op["id"].startswith(op_id + ".") for op in _operations(members[survivor])):
        time.sleep(0.05)
    members[killed].stop(signal.SIGKILL)
    started = time.monotonic()
    op = _wait_op(members[survivor], op_id)
    children = [o for o in _operations(members[survivor]) if o["id"].startswith(op_id + ".")]
    interrupted = [o["id"] for o in children if "interrupted" in o["err"]]
    print(f"evacuation finished {time.monotonic() - started:.1f} s after the kill; "
          f"{len(children)} child moves, interrupted and undone: {interrupted}; "
          f"progress {op['metadata']}")
    assert op["status"] == "Success", op
    assert op["metadata"]["evacuate_progress"] == "3/3 instances"
    found = _instances(members[survivor])
    for name in NAMES:
        assert found[name]["location"] == _name(survivor), found[name]
        assert found[name]["status"] == "Running", found[name]
        assert _copies(members, name) == [_name(survivor)], name
        # Exactly one committed move of each reached its switch.
        done = [o for o in children if o["id"].startswith(f"{op_id}.{name}.")
                and o["status"] == "Success"]
        assert len(done) == 1, children
    listed = json.loads(members[survivor].corral("cluster", "list", "--format",
                                                 "json").stdout)
    assert {m["server_name"]: m["status"] for m in listed}[_name(evacuated)] == "Evacuated"


def _clean(members: list[DaemonProcess], via: int, evacuated: int, manual: int) -> None:
    members[via].corral("cluster", "restore", _name(evacuated), "--force", timeout=300)
    members[via].corral("cluster", "unset", _name(manual), "scheduler.instance")
    for name in NAMES:
        members[via].corral("delete", "--force", name)


def test_a_new_leader_finishes_the_evacuation_of_a_dead_leader(
        members: list[DaemonProcess]) -> None:
    leader, evacuated, third = _roles(members)
    _launch_on(members[leader], _name(evacuated))
    # Nothing goes to the leader: a move must not end on the member about to die.
    members[leader].corral("cluster", "set", _name(leader), "scheduler.instance", "manual")
    try:
        _evacuate_while_killing(members, taker=leader, killed=leader, survivor=third,
                                evacuated=evacuated)
    finally:
        if members[leader].process is None:
            _restart(members[leader])
    _clean(members, third, evacuated, leader)


def test_the_evacuation_outlives_the_member_that_took_the_request(
        members: list[DaemonProcess]) -> None:
    leader, evacuated, taker = _roles(members)
    _launch_on(members[leader], _name(evacuated))
    members[leader].corral("cluster", "set", _name(taker), "scheduler.instance", "manual")
    try:
        _evacuate_while_killing(members, taker=taker, killed=taker, survivor=leader,
                                evacuated=evacuated)
    finally:
        if members[taker].process is None:
            _restart(members[taker])
    _clean(members, leader, evacuated, taker)


def test_a_cold_move_when_the_leader_dies_ends_done_or_undone(
        members: list[DaemonProcess]) -> None:
    leader, source, target = _roles(members)
    members[leader].corral("launch", "busybox", "cold", "--target", _name(source))
    members[leader].corral("exec", "cold", "--", "sh", "-c",
                           "dd if=/dev/urandom of=/root/blob bs=1M count=40 2>/dev/null")
    # The leader takes the request and dies: the target's member follows the operation.
    api = Api(str(members[leader].socket))
    status, doc = api.call("POST", f"/1.0/instances/cold?target={_name(target)}",
                           {"name": "cold", "migration": True})
    assert status == 202, doc
    op_id = doc["metadata"]["id"]
    time.sleep(0.5)
    members[leader].stop(signal.SIGKILL)
    try:
        op = _wait_op(members[target], op_id)
        where = _instances(members[target])["cold"]
        print(f"cold move after the leader's death: {op['status']} {op['err']!r}, "
              f"on {where['location']}")
        assert op["status"] in ("Success", "Failure"), op
        expected = _name(target) if op["status"] == "Success" else _name(source)
        if op["status"] == "Failure":
            assert "interrupted" in op["err"], op
        assert where["location"] == expected and where["status"] == "Running", where
        assert _copies(members, "cold") == [expected]
        size = members[target].corral("exec", "cold", "--", "sh", "-c",
                                      "wc -c < /root/blob").stdout.decode().strip()
        assert size == str(40 * 1024 * 1024)
        # Nothing holds it any more: it moves again, to where it was not.
        other = _name(source) if expected == _name(target) else _name(target)
        members[target].corral("move", "cold", "--target", other)
        assert _instances(members[target])["cold"]["location"] == other
    finally:
        if members[leader].process is None:
            _restart(members[leader])
    members[target].corral("delete", "--force", "cold")


def test_cancelling_a_move_before_its_switch_undoes_it(members: list[DaemonProcess]) -> None:
    """DELETE /1.0/operations/<id> (on any member) commits intent.cancel: a move not yet
    at its switch is undone, the instance running where it was; past the switch the
    cancel is refused and the move completes."""
    leader, source, target = _roles(members)
    members[leader].corral("launch", "busybox", "cancelled", "--target", _name(source))
    members[leader].corral("exec", "cancelled", "--", "sh", "-c",
                           "dd if=/dev/urandom of=/root/blob bs=1M count=40 2>/dev/null")
    status, doc = Api(str(members[source].socket)).call(
        "POST", f"/1.0/instances/cancelled?target={_name(target)}",
        {"name": "cancelled", "migration": True})
    assert status == 202, doc
    op_id = doc["metadata"]["id"]
    refused, _ = Api(str(members[target].socket)).call(
        "PUT", "/1.0/instances/cancelled/state", {"action": "stop"})
    assert refused == 409  # the move holds the instance
    cancelled, answer = Api(str(members[target].socket)).call(
        "DELETE", f"/1.0/operations/{op_id}")
    op = _wait_op(members[leader], op_id)
    where = _instances(members[leader])["cancelled"]
    print(f"cancel answered {cancelled}; the move ended {op['status']} on {where['location']}")
    if cancelled == 200:
        assert (op["status"], op["err"]) == ("Cancelled", "Operation cancelled"), op
        assert where["location"] == _name(source)
    else:
        assert op["status"] == "Success" and where["location"] == _name(target), (answer, op)
    assert where["status"] == "Running"
    assert _copies(members, "cancelled") == [where["location"]]
    members[leader].corral("delete", "--force", "cancelled")
