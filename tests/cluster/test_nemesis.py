"""The nemesis verbs on a real 3-member dev cluster, judged by ``corral cluster check``:
replicas agree after a follower is killed -9 and started again, after SIGSTOP/CONT,
after the leader was partitioned away (the other two elect a leader and take writes
meanwhile) and after a one-way partition."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools import nemesis
from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.integration.api import Api

pytestmark = pytest.mark.real


def _check(member: DaemonProcess, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """``corral cluster check --format json`` through ``member``: exit code and verdict."""
    out = member.corral("cluster", "check", "--format", "json", "--timeout", f"{timeout:g}",
                        check=False, timeout=timeout + 30)
    assert out.stdout, out.stderr.decode(errors="replace")
    return out.returncode, json.loads(out.stdout)


def _assert_agree(member: DaemonProcess) -> int:
    code, verdict = _check(member)
    assert code == 0 and verdict["agree"], verdict
    assert {r["name"] for r in verdict["members"]} == {"m1", "m2", "m3"}
    return int(verdict["index"])


def _leader(member: DaemonProcess) -> str | None:
    out = member.corral("cluster", "list", "--format", "json", check=False, timeout=15)
    if out.returncode != 0:
        return None
    return next((m["server_name"] for m in json.loads(out.stdout)
                 if "database-leader" in m["roles"]), None)


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.2)


def _quorate(member: DaemonProcess, timeout: float = 20.0) -> None:
    """Wait until ``member`` no longer judges that the cluster has no quorum: a member
    cut off refuses writes at once (NoQuorum, cluster/state/quorum.py) until it has heard
    from a majority again, about a reconnect and an election timeout after a heal."""
    def quorate() -> bool:
        status, doc = Api(str(member.socket)).call("GET", "/1.0/cluster/raft")
        return status == 200 and doc["metadata"]["no_quorum"] is False
    _until(quorate, timeout, f"{member.root.name} hears a quorum again")


def _has_profile(member: DaemonProcess, name: str) -> bool:
    return member.corral("profile", "show", name, check=False, timeout=15).returncode == 0


def test_replicas_agree_after_kills_stops_and_partitions() -> None:
    started = time.monotonic()
    with namespace_cluster(3) as members:
        directory: Path = members[0].root.parent
        by_name = {m.root.name: m for m in members}
        first = _assert_agree(by_name["m1"])
        leader = _leader(by_name["m1"])
        assert leader in by_name
        follower, other = sorted(n for n in by_name if n != leader)

        # kill -9 a follower, write through another member, start it, it catches up.
        nemesis.kill(directory, follower)
        by_name[other].corral("profile", "create", "after-kill")
        nemesis.start(directory, follower)
        assert _assert_agree(by_name[follower]) > first
        assert _has_profile(by_name[follower], "after-kill")

        # SIGSTOP, a write it misses, SIGCONT.
        nemesis.kill(directory, follower, "STOP")
        by_name[leader].corral("profile", "create", "after-stop")
        nemesis.kill(directory, follower, "CONT")
        _assert_agree(by_name[leader])

        # The leader partitioned away: the other two elect one of them and take writes.
        assert nemesis.partition(directory, [leader]) == 4
        _until(lambda: _leader(by_name[other]) in (follower, other), 20, "a new leader")
        by_name[other].corral("profile", "create", "during-partition")
        code, verdict = _check(by_name[other], timeout=1)
        assert code == 1 and not verdict["agree"] and verdict["missing"] == [leader], verdict
        assert nemesis.heal(directory) == 4
        _quorate(by_name[leader])  # until it hears the others again, it refuses at once
        _assert_agree(by_name[leader])
        assert _has_profile(by_name[leader], "during-partition")

        # One way: the rest's packets to a follower are dropped, its own still leave.
        new_leader = _leader(by_name[other])
        assert new_leader in by_name
        victim = next(n for n in sorted(by_name) if n != new_leader)
        assert nemesis.partition(directory, [victim], one_way=True) == 2
        by_name[new_leader].corral("profile", "create", "during-one-way")
        assert nemesis.heal(directory) == 2
        _quorate(by_name[victim])
        _assert_agree(by_name[victim])
        assert _has_profile(by_name[victim], "during-one-way")
    print(f"nemesis scenario: {time.monotonic() - started:.1f} s")


def _dev(member: DaemonProcess, *args: str) -> str:
    """``corral dev-cluster ARGS --dir DIR`` of ``member``'s cluster; its output."""
    out = member.corral("dev-cluster", *args, "--dir", str(member.root.parent), timeout=120)
    return out.stdout.decode()


def test_sides_corruption_full_disk_and_clock_offset_through_the_cli() -> None:
    started = time.monotonic()
    with namespace_cluster(3) as members:
        by_name = {m.root.name: m for m in members}
        leader = _leader(by_name["m1"])
        assert leader in by_name
        follower, other = sorted(n for n in by_name if n != leader)
        cli = by_name[other]

        # A minority holding the leader: the other two elect one and take writes.
        assert f"partitioned {leader} from the rest" in _dev(cli, "partition", leader,
                                                              "--side", "minority")
        _until(lambda: _leader(by_name[other]) in (follower, other), 20, "a new leader")
        _dev(cli, "heal")
        _assert_agree(cli)

        # A flipped journal on a stopped follower: it rebuilds from the leader.
        _dev(cli, "kill", follower)
        assert "flipped" in _dev(cli, "corrupt", follower, "--file", "journal")
        _dev(cli, "start", follower)
        _assert_agree(by_name[follower])
        log = (by_name[follower].root / "corral.log").read_text(errors="replace")
        assert "is damaged at offset" in log

        # A full disk under the follower's Raft directory: the rest go on, and once it
        # is freed the follower catches up; detached, its state is back on its own disk.
        raft = by_name[follower].root / "raft"
        _dev(cli, "kill", follower)
        _dev(cli, "disk", follower, "attach", "--size", "16")
        _dev(cli, "start", follower)
        assert "filled" in _dev(cli, "disk", follower, "fill")
        by_name[other].corral("profile", "create", "while-full")
        assert "freed" in _dev(cli, "disk", follower, "free")
        _until(lambda: _has_profile(by_name[follower], "while-full"), 30, "catch-up")
        _dev(cli, "kill", follower)
        _dev(cli, "disk", follower, "detach")
        assert not any(line.split()[4] == str(raft.resolve())
                       for line in Path("/proc/self/mountinfo").read_text().splitlines())
        _dev(cli, "start", follower, "--clock-offset", "30")
        _assert_agree(by_name[follower])
        assert _has_profile(by_name[follower], "while-full")
        pid = json.loads((by_name[follower].root.parent / "devcluster.json").read_text())
        pid = next(m["pid"] for m in pid["members"] if m["name"] == follower)
        assert b"CORRAL_TEST_CLOCK_OFFSET=30" in Path(f"/proc/{pid}/environ").read_bytes()
    print(f"on-disk nemeses: {time.monotonic() - started:.1f} s")
