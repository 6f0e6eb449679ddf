"""Liveness on the leader's clock: members whose wall clocks are 30 s off stay ONLINE,
and a killed member goes OFFLINE within the threshold (and ONLINE again) on every view."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from cluster.state.clock import TEST_CLOCK_OFFSET_ENV
from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster

pytestmark = pytest.mark.real

THRESHOLD = 3.0
SLACK = 4.0  # a look every 0.25 s, a commit, and an election when the leader is killed


@pytest.fixture(scope="module")
def skewed() -> Iterator[list[DaemonProcess]]:
    """A 3-member cluster where m2's clock is 30 s behind and m3's 30 s ahead."""
    with namespace_cluster(3) as started:
        started[0].corral("config", "set", "cluster.offline_threshold", f"{THRESHOLD:g}")
        for daemon, offset in ((started[1], "-30"), (started[2], "30")):
            daemon.stop()
            daemon.extra_env[TEST_CLOCK_OFFSET_ENV] = offset
            daemon.start()
        yield started


def statuses(daemon: DaemonProcess) -> dict[str, str] | None:
    """Every member's status as ``daemon`` shows it, or None if it did not answer."""
    try:
        out = daemon.corral("cluster", "list", "--format", "json", check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    return {m["server_name"]: m["status"] for m in json.loads(out.stdout)}


def wait_for(members: list[DaemonProcess], wanted: Callable[[dict[str, str]], bool],
             timeout: float, hold: Callable[[dict[str, str]], bool] = lambda _: True,
             ) -> float:
    """Seconds until every member in ``members`` shows a view for which ``wanted`` holds;
    every view seen meanwhile must satisfy ``hold``."""
    started = time.monotonic()
    pending = list(members)
    while pending:
        views = [(d, statuses(d)) for d in pending]
        for daemon, seen in views:
            assert seen is None or hold(seen), f"{daemon.root.name} saw {seen}"
        pending = [d for d, seen in views if not (seen and wanted(seen))]
        if not pending:
            break
        if time.monotonic() - started > timeout:
            raise AssertionError(f"after {timeout:g}s: " + "; ".join(
                f"{d.root.name} sees {statuses(d)}" for d in pending))
        time.sleep(0.2)
    return time.monotonic() - started


def test_skewed_clocks_stay_online_and_a_killed_member_goes_offline_and_back(
        skewed: list[DaemonProcess]) -> None:
    everyone = {"m1": "Online", "m2": "Online", "m3": "Online"}
    wait_for(skewed, lambda seen: seen == everyone, 30)
    deadline = time.monotonic() + 15
    looks = 0
    while time.monotonic() < deadline:  # ~15 s, 5 thresholds: no one is ever demoted
        for daemon in skewed:
            assert statuses(daemon) == everyone, f"{daemon.root.name}: {statuses(daemon)}"
            looks += 1
        time.sleep(0.3)
    assert looks >= 15

    behind, others = skewed[1], [skewed[0], skewed[2]]
    behind.stop(signal.SIGKILL)
    took = wait_for(others, lambda seen: seen.get("m2") == "Offline", THRESHOLD + SLACK)
    print(f"m2 OFFLINE on every member's view {took:.1f}s after kill -9")

    behind.start()
    took = wait_for(skewed, lambda seen: seen == everyone, 30)
    print(f"m2 ONLINE again on every view {took:.1f}s after it was ready")


def leader_index(daemon: DaemonProcess) -> int:
    out = json.loads(daemon.corral("cluster", "list", "--format", "json").stdout)
    return next(int(m["server_name"][1:]) - 1 for m in out if "database-leader" in m["roles"])


def test_a_new_leader_demotes_no_one_and_finds_the_old_leader_dead(
        skewed: list[DaemonProcess]) -> None:
    """The new leader restarts every deadline with a threshold of grace: the skewed
    members stay ONLINE across the change, and the killed leader goes OFFLINE."""
    everyone = {"m1": "Online", "m2": "Online", "m3": "Online"}
    wait_for(skewed, lambda seen: seen == everyone, 30)
    old = leader_index(skewed[0])
    name = f"m{old + 1}"
    rest = [d for i, d in enumerate(skewed) if i != old]
    skewed[old].stop(signal.SIGKILL)
    election = 5.0  # pysyncobj's failover here is 0.5-2.8 s after kill -9
    survivors = {n: "Online" for n in everyone if n != name}
    took = wait_for(rest, lambda seen: seen.get(name) == "Offline",
                    election + THRESHOLD + SLACK,
                    hold=lambda seen: {n: seen[n] for n in survivors} == survivors)
    print(f"old leader {name} OFFLINE on the other views {took:.1f}s after kill -9")
    time.sleep(2 * THRESHOLD)  # past the new leader's grace: still no survivor demoted
    for daemon in rest:
        seen = statuses(daemon)
        assert seen is not None and seen == {**survivors, name: "Offline"}, seen
    skewed[old].start()
    wait_for(skewed, lambda seen: seen == everyone, 30)
