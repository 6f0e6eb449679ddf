"""HA failover on local storage, end to end on a real 3-member cluster in namespaces.

A container with ``cluster.ha=restart`` writes a counter to its root filesystem every
100 ms. Its volume is replicated to another member; then its whole host is killed (the
daemon, the container, everything: ``dev-cluster kill --host``). The test checks, from
outside corral:

- the container runs again on another member, with the data of its replica: the counter
  read back is at most one replication interval plus the detection time behind the last
  value written before the kill;
- at no sampled moment does it run on two hosts (``[lxc monitor]`` processes read from
  /proc, not corral's view);
- the killed host, started again, does not start it, drops its stale copy, and the
  instance's replica is shipped again (to it or the third member) under the new epoch.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.api.metrics.render import parse
from devtools import devcluster
from devtools.ha_probe import running_on as _running_on
from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_nemesis import _dev, _leader
from tests.integration.api import Api

pytestmark = pytest.mark.real
NAME = "ha1"
INTERVAL = 2.0  # cluster.ha.replication_interval (s), shorter than the default to be quick
COUNTER = ("setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /counter.new; "
           "mv /counter.new /counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &")


def _until(predicate: Callable[[], Any], timeout: float, what: str,
           sample: Callable[[], None] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        sample()
        found = predicate()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


def running_on(members: dict[str, DaemonProcess], name: str) -> list[str]:
    return _running_on({m: d.root for m, d in members.items()}, name)


def _has_copy(daemon: DaemonProcess) -> bool:
    """Whether the member's pool still has the container's volume (looked at in the
    daemon's mount namespace: a btrfs pool is mounted there only)."""
    state = devcluster.read_state(daemon.root.parent)
    pid = next(m["pid"] for m in state["members"] if m["corral_dir"] == str(daemon.root))
    path = daemon.root / "storage-pools" / "default" / "containers" / NAME
    found = subprocess.run(["nsenter", "-t", str(pid), "-m", "stat", "-c", "%n",
                            str(path)], check=False, timeout=30, capture_output=True)
    assert b"No such file" in found.stderr or found.returncode == 0, found.stderr
    return found.returncode == 0


def _instance(member: DaemonProcess) -> dict[str, Any]:
    status, doc = Api(str(member.socket)).call("GET", f"/1.0/instances/{NAME}")
    return doc.get("metadata") or {} if status == 200 else {}


def _leader_metrics(leader: DaemonProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The leader's own ``/1.0/metrics`` samples, by name and sorted labels."""
    status, _, body = Api(str(leader.socket)).raw("GET", "/1.0/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse(body.decode()) for s in family.samples}


def _counter_on_disk(daemon: DaemonProcess) -> int:
    """The counter the dead host's copy wrote last, read from its disk. A btrfs pool was
    mounted in the daemon's own mount namespace, gone with the host: its loop file is
    mounted read-only here for the read (as one would read a dead host's disk)."""
    inside = Path("containers") / NAME / "rootfs" / "counter"
    loop = daemon.root / "disks" / "default.img"
    if not loop.exists():
        return int((daemon.root / "storage-pools" / "default" / inside).read_text().strip())
    with tempfile.TemporaryDirectory() as mountpoint:
        subprocess.run(["mount", "-o", "ro,loop", str(loop), mountpoint], check=True,
                       timeout=60)
        try:
            return int((Path(mountpoint) / inside).read_text().strip())
        finally:
            subprocess.run(["umount", mountpoint], check=True, timeout=60)


@pytest.mark.parametrize("backend", ["dir", "btrfs"])
def test_a_killed_hosts_ha_container_runs_again_elsewhere_with_its_data(backend: str) -> None:
    with namespace_cluster(3, storage_backend=backend) as started:
        members = {m.root.name: m for m in started}
        leader = _leader(members["m1"])
        assert leader in members
        victim, other = sorted(n for n in members if n != leader)
        cli = members[other]
        cli.corral("image", "build", "busybox", timeout=300)
        cli.corral("launch", "busybox", NAME, "--target", victim,
                   "-c", "cluster.ha=restart",
                   "-c", f"cluster.ha.replication_interval={INTERVAL:g}", timeout=180)
        cli.corral("exec", NAME, "--", "sh", "-c", COUNTER)
        synced = _until(lambda: [r for r in (_instance(cli).get("ha") or {}).get("replicas", [])
                                 if r.get("snapshot")], 60, "a complete replica")
        print("replica:", json.dumps(synced))
        time.sleep(INTERVAL * 1.5)  # the counter has been shipped at least once more

        double: list[list[str]] = []

        def sample() -> None:
            on = running_on(members, NAME)
            if len(on) > 1:
                double.append(on)

        killed = time.monotonic()
        assert "whole host" in _dev(cli, "kill", victim, "--host")
        before = _counter_on_disk(members[victim])
        _until(lambda: _instance(cli).get("location") not in ("", victim)
               and _instance(cli).get("status") == "Running", 60,
               f"{NAME} running on another member", sample)
        took = time.monotonic() - killed
        inst = _instance(cli)
        target = inst["location"]
        after = int(members[target].corral("exec", NAME, "--", "cat", "/counter")
                    .stdout.strip())
        failover = inst["ha"]["last_failover"]
        print(f"{backend}: failover {victim} -> {target} in {took:.1f} s; counter {before} "
              f"before the kill, {after} from the replica; {json.dumps(failover)}")
        assert running_on(members, NAME) == [target]
        assert double == []
        assert inst["ha"]["epoch"] == 1 and failover["from"] == victim
        lost = before - after
        # at most one interval and the time it took to read and ship, in 100 ms ticks
        assert 0 <= lost <= (INTERVAL * 2 + 2) * 10, (before, after)
        # The leader counted the verdict and the failover, and timed it from the verdict
        # to the instance running (its replica reports that a moment after the API does).
        found = _until(lambda: (m := _leader_metrics(members[leader])).get(
            ("corral_ha_failover_duration_seconds_count", ())) and m, 30,
            "the failover timed on the leader")
        assert found[("corral_ha_failovers_total", ())] >= 1
        assert found[("corral_member_liveness_transitions_total",
                      (("member", victim), ("status", "OFFLINE")))] >= 1
        assert 0 < found[("corral_ha_failover_duration_seconds_sum", ())] < took
        print(f"leader's failover duration: "
              f"{found[('corral_ha_failover_duration_seconds_sum', ())]:.2f} s")

        _dev(cli, "start", victim)
        came_back = members[victim]
        _until(lambda: not _has_copy(came_back), 60, f"{victim} drops its stale copy",
               sample)
        assert running_on(members, NAME) == [target] and double == []
        _until(lambda: [r for r in (_instance(cli).get("ha") or {}).get("replicas", [])
                        if r.get("snapshot") and r.get("epoch") == 1], 60,
               "a replica shipped under the new epoch", sample)
        assert double == []
        cli.corral("delete", "--force", NAME, timeout=120)
