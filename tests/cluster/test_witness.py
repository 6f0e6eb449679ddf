"""Two hosts and a witness (``corral init --join TOKEN --witness``), in namespaces.

- The witness votes and holds nothing: no storage pool, no bridge; instances land on the
  hosts; a launch or a dry run targeted at it is refused with the scheduler's reason;
  evacuating it succeeds and moves nothing.
- kill -9 either host's daemon: the other host and the witness still elect a leader and
  accept writes, and the dead host shows OFFLINE. The first host is restarted before the
  second is killed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.harness import DaemonProcess
from devtools.netns import netns_path
from tests.cluster.conftest import namespace_cluster
from tests.integration.api import Api

pytestmark = pytest.mark.real
REASON = "m3 is a witness: it holds no instances"
THRESHOLD = "4"  # cluster.offline_threshold (s): OFFLINE shows quickly


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[DaemonProcess]]:
    """m1 and m2 are hosts, m3 the witness."""
    with namespace_cluster(3, witness=True) as started:
        started[0].corral("image", "build", "busybox", timeout=300)
        started[0].corral("config", "set", "cluster.offline_threshold", THRESHOLD)
        yield started


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.3)


def _members(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    out = daemon.corral("cluster", "list", "--format", "json", timeout=20).stdout
    return {m["server_name"]: m for m in json.loads(out)}


def _answers(daemon: DaemonProcess, *args: str) -> bool:
    try:
        return daemon.corral(*args, check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _status_of(daemon: DaemonProcess, name: str) -> str:
    try:
        return str(_members(daemon)[name]["status"]).upper()
    except (AssertionError, subprocess.TimeoutExpired, ValueError, KeyError):
        return ""


def _has_link(member: DaemonProcess, link: str) -> bool:
    assert member.netns is not None
    found = subprocess.run(["nsenter", f"--net={netns_path(member.netns)}", "ip", "link",
                            "show", link], capture_output=True, check=False, timeout=20)
    return found.returncode == 0


def test_the_witness_votes_and_holds_nothing(cluster: list[DaemonProcess]) -> None:
    m1, m2, m3 = cluster
    members = _members(m1)
    roles = {n: [r for r in m["roles"] if r != "database-leader"] for n, m in members.items()}
    assert roles == {"m1": ["database"], "m2": ["database"], "m3": ["database", "witness"]}
    shown = Api(str(m1.socket)).get("/1.0/cluster/members/m3")
    assert "witness" in shown["roles"] and shown["database"] is True
    table = m1.corral("cluster", "list").stdout.decode()
    assert "witness" in table
    # No storage pool and no bridge on the witness; the hosts have both.
    assert not (m3.root / "storage-pools" / "default").exists()
    assert not _has_link(m3, m3.bridge)
    assert (m1.root / "storage-pools" / "default").is_dir() and _has_link(m1, m1.bridge)

    dry = m1.corral("launch", "busybox", "nowhere", "--target", "m3",
                    "--dry-run").stdout.decode()
    assert f"- {REASON}" in dry and f"error: member {REASON}" in dry, dry
    refused = m1.corral("launch", "busybox", "nowhere", "--target", "m3", check=False)
    assert refused.returncode != 0 and REASON in refused.stderr.decode(), refused.stderr
    untargeted = m2.corral("launch", "busybox", "w0", "--dry-run").stdout.decode()
    assert f"- {REASON}" in untargeted and "placed on m" in untargeted, untargeted
    for name in ("w1", "w2"):
        m3.corral("launch", "busybox", name)  # through the witness's own API
    listed = {i["name"]: i for i in Api(str(m1.socket)).get("/1.0/instances?recursion=1")}
    assert sorted(listed) == ["w1", "w2"], listed
    assert {i["location"] for i in listed.values()} <= {"m1", "m2"}
    assert all(i["status"] == "Running" for i in listed.values()), listed
    assert not any((m3.root / "containers").iterdir())

    # Evacuating the witness succeeds and moves nothing; its vote stays.
    m1.corral("cluster", "evacuate", "m3", timeout=120)
    after = {i["name"]: i["location"]
             for i in Api(str(m1.socket)).get("/1.0/instances?recursion=1")}
    assert after == {n: i["location"] for n, i in listed.items()}
    assert "witness" in _members(m1)["m3"]["roles"]
    m1.corral("cluster", "restore", "m3", timeout=120)
    _until(lambda: _status_of(m1, "m3") == "ONLINE", 30, "m3 is restored")


def _lose_and_recover(cluster: list[DaemonProcess], victim: int) -> None:
    """kill -9 host ``victim`` (0 or 1); the other host and the witness keep going."""
    host, witness = cluster[1 - victim], cluster[2]
    name = f"m{victim + 1}"
    cluster[victim].stop(signal.SIGKILL)
    started = time.monotonic()
    profile = f"after-{name}"
    _until(lambda: _answers(host, "profile", "create", profile), 60,
           f"a write with {name} dead")
    wrote = time.monotonic() - started
    _until(lambda: _status_of(host, name) == "OFFLINE", 60, f"{name} shown OFFLINE")
    offline = time.monotonic() - started
    raft = Api(str(witness.socket)).get("/1.0/cluster/raft")
    print(f"{name} killed: write accepted after {wrote:.1f} s, OFFLINE after "
          f"{offline:.1f} s; leader {raft.get('leader')}")
    assert raft.get("leader") is not None
    _until(lambda: profile in witness.corral("profile", "list").stdout.decode(), 20,
           f"the witness sees {profile}")
    assert _status_of(witness, name) == "OFFLINE"
    cluster[victim].start(timeout=120)
    _until(lambda: _status_of(host, name) == "ONLINE", 60, f"{name} back ONLINE")
    _until(lambda: profile in cluster[victim].corral("profile", "list", check=False)
           .stdout.decode(), 60, f"{name} catches up")


def test_two_hosts_and_a_witness_survive_the_loss_of_either_host(
        cluster: list[DaemonProcess]) -> None:
    for victim in (0, 1):
        try:
            _lose_and_recover(cluster, victim)
        finally:
            if cluster[victim].process is None:
                cluster[victim].start(timeout=120)
    m1 = cluster[0]
    profiles = m1.corral("profile", "list").stdout.decode()
    assert "after-m1" in profiles and "after-m2" in profiles, profiles
    for name in ("w1", "w2"):
        m1.corral("delete", "--force", name, timeout=120)
    assert Api(str(m1.socket)).get("/1.0/instances") == []
