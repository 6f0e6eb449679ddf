"""``corral dev-cluster kill MEMBER --host`` kills a whole host: on a real 3-member cluster,
a member running a container loses its daemon, the container's ``[lxc monitor]`` and every
process in the container, checked in /proc; ``dev-cluster start`` brings the daemon back
and the cluster sees the member ONLINE again. Containers only: a VM under TCG would add
minutes of image build and boot to this test (QEMU is found by the same rules)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from devtools.host_kill import read_procs
from node_agent.paths import Paths
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_nemesis import _dev, _leader, _until
from tests.integration.api import Api

pytestmark = pytest.mark.real


def _of_member(root: Path) -> list[str]:
    """What /proc shows of ``root``'s host, read here independently of ``host_kill``:
    its daemon (by environment), its monitors and QEMU (by command line) and its
    containers' processes (by cgroup), without zombies and without this test."""
    prefix = f"/{Paths(root).cgroup_prefix}/"
    found = []
    for proc in read_procs():
        if proc.state == "Z" or "pytest" in proc.cmdline or "dev-cluster" in proc.cmdline:
            continue
        if (f"CORRAL_DIR={root}" in proc.environ or f"{root}/" in proc.cmdline
                or any(prefix in f"{c}/" for c in proc.cgroups)):
            found.append(f"{proc.pid} {proc.cmdline}")
    return found


def _status(member: DaemonProcess, name: str) -> str | None:
    out = member.corral("cluster", "list", "--format", "json", check=False, timeout=15)
    if out.returncode != 0:
        return None
    return next((m["status"] for m in json.loads(out.stdout) if m["server_name"] == name), None)


def test_kill_host_leaves_nothing_of_the_member_and_start_brings_it_back() -> None:
    with namespace_cluster(3) as members:
        by_name = {m.root.name: m for m in members}
        leader = _leader(by_name["m1"])
        assert leader in by_name
        victim, other = sorted(n for n in by_name if n != leader)
        cli = by_name[other]
        cli.corral("image", "build", "busybox", timeout=300)
        cli.corral("launch", "busybox", "c1", "--target", victim, timeout=180)
        state = Api(str(cli.socket)).get("/1.0/instances/c1/state")
        assert state["status"] == "Running", state
        root = by_name[victim].root
        before = _of_member(root)
        assert any("[lxc monitor]" in line for line in before), before
        assert any(f"/{Paths(root).cgroup_prefix}/" in c for p in read_procs()
                   for c in p.cgroups), "no process in the container's cgroup"

        started = time.monotonic()
        assert "whole host" in _dev(cli, "kill", victim, "--host")
        took = time.monotonic() - started
        assert _of_member(root) == [], _of_member(root)
        print(f"killed {len(before)} processes of {victim} in {took:.1f} s")

        _until(lambda: _status(cli, victim) == "Offline", 60, f"{victim} offline")
        _dev(cli, "start", victim)
        _until(lambda: _status(cli, victim) == "Online", 60, f"{victim} online again")
        _until(lambda: _status(by_name[victim], victim) == "Online", 30, "its own view")
