"""HA failover of a virtual machine on local storage, end to end on a real 3-member
cluster in namespaces (QEMU under TCG here).

A VM with ``cluster.ha=restart`` writes a counter to a file on its root disk (synced)
every 100 ms. Its disk is replicated to another member by QEMU's backup job (a whole copy,
then deltas of the clusters written since the last one); then its whole host is killed
(``dev-cluster kill --host``: the daemon, QEMU, everything). Checked from outside corral:

- the VM boots again on another member from its replica: the counter read back is at
  most one replication interval plus the detection time behind the value read just
  before the kill, and never ahead of it by more than the moments between read and kill;
- at no sampled moment does its QEMU run on two hosts (read from /proc);
- the killed host, started again, does not start it and removes its stale copy (VM
  definition and disk), and the disk is replicated again under the new epoch.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from devtools import devcluster
from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_ha_failover import _until, running_on
from tests.cluster.test_nemesis import _dev, _leader
from tests.integration.api import Api

pytestmark = pytest.mark.real
NAME = "havm1"
INTERVAL = 2.0  # cluster.ha.replication_interval (s)
COUNTER = ("setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /mnt/root/counter.new; "
           "mv /mnt/root/counter.new /mnt/root/counter; sync; sleep 0.1; done' "
           "</dev/null >/dev/null 2>&1 &")


def _instance(member: DaemonProcess) -> dict[str, object]:
    status, doc = Api(str(member.socket)).call("GET", f"/1.0/instances/{NAME}")
    return doc.get("metadata") or {} if status == 200 else {}


def _replicas(member: DaemonProcess, epoch: int) -> list[dict[str, object]]:
    ha = _instance(member).get("ha") or {}
    assert isinstance(ha, dict)
    return [r for r in ha.get("replicas", []) if r.get("snapshot") and r.get("epoch") == epoch]


def _exec(member: DaemonProcess, script: str, timeout: float = 120.0) -> str:
    """Run ``script`` in the VM once its agent answers."""
    deadline = time.monotonic() + timeout
    while True:
        done = member.corral("exec", NAME, "--", "sh", "-c", script, check=False, timeout=60)
        if done.returncode == 0:
            return done.stdout.decode().strip()
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.5)


def _has_copy(member: DaemonProcess) -> bool:
    """Whether the member still has the VM's definition or its volume (looked at in the
    daemon's mount namespace: a btrfs pool is mounted there only)."""
    if (member.root / "vms" / NAME).exists():
        return True
    state = devcluster.read_state(member.root.parent)
    pid = next(m["pid"] for m in state["members"] if m["corral_dir"] == str(member.root))
    path = member.root / "storage-pools" / "default" / "virtual-machines" / NAME
    found = subprocess.run(["nsenter", "-t", str(pid), "-m", "stat", "-c", "%n", str(path)],
                           check=False, timeout=30, capture_output=True)
    assert b"No such file" in found.stderr or found.returncode == 0, found.stderr
    return found.returncode == 0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["dir", "btrfs"])
def test_a_killed_hosts_ha_vm_boots_elsewhere_with_its_data(backend: str) -> None:
    with namespace_cluster(3, storage_backend=backend) as started:
        members = {m.root.name: m for m in started}
        leader = _leader(members["m1"])
        victim, other = sorted(n for n in members if n != leader)
        cli = members[other]
        cli.corral("image", "build", "busybox", "--vm", timeout=300)
        cli.corral("launch", "busybox-vm", NAME, "--vm", "--target", victim,
                   "-c", "limits.memory=256MiB", "-d", "root,size=1GiB",  # small pools
                   "-c", "cluster.ha=restart",
                   "-c", f"cluster.ha.replication_interval={INTERVAL:g}", timeout=300)
        _exec(cli, COUNTER)
        print("replica:", json.dumps(_until(lambda: _replicas(cli, 0), 120,
                                            "a complete replica")))
        time.sleep(INTERVAL * 2)  # deltas have been shipped since

        double: list[list[str]] = []

        def sample() -> None:
            on = running_on(members, NAME)
            if len(on) > 1:
                double.append(on)

        before = int(_exec(cli, "cat /mnt/root/counter"))
        killed = time.monotonic()
        assert "whole host" in _dev(cli, "kill", victim, "--host")
        _until(lambda: _instance(cli).get("location") not in ("", victim)
               and _instance(cli).get("status") == "Running", 180,
               f"{NAME} running on another member", sample)
        took = time.monotonic() - killed
        inst = _instance(cli)
        target = str(inst["location"])
        after = int(_exec(members[target], "cat /mnt/root/counter"))
        ha = inst["ha"]
        assert isinstance(ha, dict)
        print(f"{backend}: VM failover {victim} -> {target} in {took:.1f} s; counter {before} read "
              f"before the kill, {after} from the replica; "
              f"{json.dumps(ha['last_failover'])}")
        assert running_on(members, NAME) == [target] and double == []
        assert ha["epoch"] == 1 and ha["last_failover"]["from"] == victim
        # a replica is at most one interval plus its own shipping old when the host dies
        # (100 ms ticks; the counter slows down under TCG, so this bound is generous)
        assert before - (INTERVAL * 2 + 3) * 10 <= after <= before + 30, (before, after)

        _dev(cli, "start", victim)
        came_back = members[victim]
        _until(lambda: not _has_copy(came_back), 120, f"{victim} removes its stale copy",
               sample)
        assert running_on(members, NAME) == [target] and double == []
        _until(lambda: _replicas(cli, 1), 120, "a replica shipped under the new epoch",
               sample)
        assert double == []
        cli.corral("delete", "--force", NAME, timeout=180)
