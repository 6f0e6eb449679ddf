"""Self-fencing on a real 3-member cluster in namespaces. A member cut off past the
offline threshold, because its daemon is frozen (SIGSTOP: only the watchdog process can
act) or because the network cuts it off (its daemon is alive but no heartbeat is
acknowledged: the daemon and the watchdog both act), has its HA container killed before
the leader can judge it OFFLINE (and fail the container over), so at no sampled moment
does the container run on two hosts (read from /proc, not corral's view). Once the fault
ends the container runs again on exactly one host: where the cluster has it (its member
again, started anew after the fence, when it was not failed over)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devtools import nemesis
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_ha_failover import NAME, _instance, _until, running_on
from tests.cluster.test_nemesis import _leader

pytestmark = pytest.mark.real
FAULT = 6.0  # s: past the offline threshold (4 s)


def _fault(kind: str, directory: Path, victim: str, on: bool) -> None:
    if kind == "sigstop":
        nemesis.kill(directory, victim, "STOP" if on else "CONT")
    elif on:
        nemesis.partition(directory, [victim])
    else:
        nemesis.heal(directory)


@pytest.mark.parametrize("kind", ["sigstop", "partition"])
def test_a_cut_off_members_ha_container_is_fenced_in_time_and_runs_once_after(
        kind: str) -> None:
    with namespace_cluster(3) as started:
        members = {m.root.name: m for m in started}
        leader = _leader(members["m1"])
        assert leader in members
        victim, other = sorted(n for n in members if n != leader)
        cli = members[other]
        cli.corral("image", "build", "busybox", timeout=300)
        cli.corral("launch", "busybox", NAME, "--target", victim, "-c", "cluster.ha=restart",
                   timeout=180)
        lease_file = members[victim].root / "fencing" / "lease.json"
        _until(lambda: lease_file.exists() and NAME in lease_file.read_text(), 10,
               "the HA container in the victim's fencing lease")

        seen: list[tuple[float, list[str]]] = []

        def sample() -> None:
            seen.append((time.monotonic(), running_on(members, NAME)))

        directory = members[victim].root.parent
        began = time.monotonic()
        _fault(kind, directory, victim, True)
        try:
            while time.monotonic() - began < FAULT:
                sample()
                time.sleep(0.05)
        finally:
            _fault(kind, directory, victim, False)
        fenced_at = next((t for t, on in seen if victim not in on), began + 99) - began
        print(f"\n{kind}: fenced {fenced_at:.2f} s after the fault began; lease "
              f"{json.loads(lease_file.read_text())}")
        assert fenced_at < 4.0 / 1.05  # the lease (~3.05 s) ends before OFFLINE can come
        # The frozen daemon cannot: its watchdog did. A live one races its watchdog.
        logs = [lease_file.parent / "watchdog.log", members[victim].root / "corral.log"]
        killers = [log.name for log in logs[:1 if kind == "sigstop" else 2]
                   if f"fenced lxc {NAME}: killed pid" in log.read_text()]
        assert killers, f"no kill of {NAME} logged by the watchdog or the daemon"

        def runs_where_the_cluster_has_it() -> bool:
            inst = _instance(cli)
            return inst.get("status") == "Running" and running_on(members, NAME) == [
                inst.get("location")]

        _until(runs_where_the_cluster_has_it, 60, f"{NAME} running once, where it is placed",
               sample)
        print(f"{NAME} runs on {_instance(cli)['location']} "
              f"{time.monotonic() - began:.1f} s after the fault began")
        for _ in range(20):
            sample()
            time.sleep(0.1)
        assert [on for _, on in seen if len(on) > 1] == []
        cli.corral("delete", "--force", NAME, timeout=120)
