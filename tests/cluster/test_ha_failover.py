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
import time
from collections.abc import Callable
from typing import Any

import pytest

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


def _instance(member: DaemonProcess) -> dict[str, Any]:
    status, doc = Api(str(member.socket)).call("GET", f"/1.0/instances/{NAME}")
    return doc.get("metadata") or {} if status == 200 else {}


def _counter_on_disk(daemon: DaemonProcess) -> int:
    path = daemon.root / "storage-pools" / "default" / "containers" / NAME / "rootfs" / "counter"
    return int(path.read_text().strip())


def test_a_killed_hosts_ha_container_runs_again_elsewhere_with_its_data() -> None:
    with namespace_cluster(3) as started:
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
        print(f"failover {victim} -> {target} in {took:.1f} s; counter {before} before the "
              f"kill, {after} from the replica; {json.dumps(failover)}")
        assert running_on(members, NAME) == [target]
        assert double == []
        assert inst["ha"]["epoch"] == 1 and failover["from"] == victim
        lost = before - after
        # at most one interval and the time it took to read and ship, in 100 ms ticks
        assert 0 <= lost <= (INTERVAL * 2 + 2) * 10, (before, after)

        _dev(cli, "start", victim)
        came_back = members[victim]
        copy = came_back.root / "storage-pools" / "default" / "containers" / NAME
        _until(lambda: not copy.exists(), 60, f"{victim} drops its stale copy", sample)
        assert running_on(members, NAME) == [target] and double == []
        _until(lambda: [r for r in (_instance(cli).get("ha") or {}).get("replicas", [])
                        if r.get("snapshot") and r.get("epoch") == 1], 60,
               "a replica shipped under the new epoch", sample)
        assert double == []
        cli.corral("delete", "--force", NAME, timeout=120)
