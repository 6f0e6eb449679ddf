"""Past cluster.max_voters members follow without voting; a lost voter is replaced."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from cluster.harness import DaemonProcess
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
    # The quorum kept its size: losing the leader as well still leaves a majority.
    four[leader].stop(signal.SIGKILL)
    rest = [d for i, d in enumerate(four) if i not in (leader, lost)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if rest[0].corral("profile", "create", "still-writable", check=False,
                          timeout=15).returncode == 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("no write accepted after losing two of the original voters")
    assert b"still-writable" in rest[1].corral("profile", "list").stdout
