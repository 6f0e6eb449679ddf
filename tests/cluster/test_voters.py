"""Past cluster.max_voters members follow without voting; a lost voter is replaced."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def four() -> Iterator[list[DaemonProcess]]:
    with namespace_cluster(4) as started:
        yield started


def _roles(daemon: DaemonProcess) -> dict[str, list[str]]:
    out = daemon.corral("cluster", "list", "--format", "json", timeout=15).stdout
    return {m["server_name"]: [r for r in m["roles"] if r != "database-leader"]
            for m in json.loads(out)}


def _try(daemon: DaemonProcess, *args: str) -> bool:
    try:
        return daemon.corral(*args, check=False, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _leader_index(daemon: DaemonProcess) -> int:
    out = json.loads(daemon.corral("cluster", "list", "--format", "json").stdout)
    return next(int(m["server_name"][1:]) - 1 for m in out if "database-leader" in m["roles"])


def test_fourth_member_follows_and_is_promoted_when_a_voter_is_lost(
        four: list[DaemonProcess]) -> None:
    assert _roles(four[0]) == {"m1": ["database"], "m2": ["database"], "m3": ["database"],
                               "m4": []}
    four[0].corral("config", "set", "cluster.offline_threshold", "3")
    leader = _leader_index(four[0])
    lost = next(i for i in range(3) if i != leader)
    four[lost].stop(signal.SIGKILL)
    survivor = four[leader]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        roles = _roles(survivor)
        if roles["m4"] == ["database"] and roles[f"m{lost + 1}"] == []:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"m4 was not promoted: {_roles(survivor)}")
    time.sleep(2)  # the leader changes Raft's configuration right after the roles
    # The quorum kept its size: losing the leader as well still leaves a majority.
    four[leader].stop(signal.SIGKILL)
    rest = [d for i, d in enumerate(four) if i not in (leader, lost)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _try(rest[0], "profile", "create", "still-writable"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("no write accepted after losing two of the original voters")
    assert b"still-writable" in rest[1].corral("profile", "list").stdout

    # The member demoted while it was down comes back as a follower by itself and
    # catches up; the old leader comes back as a voter.
    four[lost].start()
    four[leader].start()
    lost_name = f"m{lost + 1}"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        listed = four[lost].corral("cluster", "list", "--format", "json", check=False,
                                   timeout=15)
        seen = json.loads(listed.stdout) if listed.returncode == 0 else []
        me = next((m for m in seen if m["server_name"] == lost_name), None)
        if (me and me["roles"] == [] and me["status"] == "Online"
                and b"still-writable" in four[lost].corral("profile", "list").stdout):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"{lost_name} did not come back as a follower: {_roles(rest[0])}")
    assert sum("database" in r for r in _roles(four[lost]).values()) == 3


def test_roles_move_the_vote_and_raft_follows(four: list[DaemonProcess]) -> None:
    """Demote a voter and promote the follower by hand; then losing one more voter must
    leave a quorum, which holds only if Raft's own configuration followed the roles."""
    # No automatic promotions meanwhile: under load a 3 s threshold flags slow members.
    four[0].corral("config", "set", "cluster.offline_threshold", "60")
    roles = _roles(four[0])
    follower = next(name for name, r in roles.items() if r == [])
    leader = _leader_index(four[0])
    demoted = next(f"m{i + 1}" for i in range(4)
                   if i != leader and roles[f"m{i + 1}"] == ["database"])
    bad = four[0].corral("cluster", "role", "add", follower, "database", check=False)
    assert bad.returncode == 1 and b"maximum number of voters" in bad.stderr
    four[0].corral("cluster", "role", "remove", demoted, "database")
    four[0].corral("cluster", "role", "add", follower, "database")
    deadline = time.monotonic() + 10  # m1's replica may trail the leader by a tick
    while not (_roles(four[0])[demoted] == [] and _roles(four[0])[follower] == ["database"]):
        assert time.monotonic() < deadline, _roles(four[0])
        time.sleep(0.2)
    time.sleep(8)  # the leader's reconciliation runs every 2.5 s, one change per round
    third = next(name for name, r in _roles(four[0]).items()
                 if r == ["database"] and name not in (follower, f"m{leader + 1}"))
    four[int(third[1:]) - 1].stop(signal.SIGKILL)
    writer = four[leader]
    deadline = time.monotonic() + 20
    while not _try(writer, "profile", "create", "after-role-change"):
        assert time.monotonic() < deadline, "no quorum after moving the vote by hand"
        time.sleep(0.5)
