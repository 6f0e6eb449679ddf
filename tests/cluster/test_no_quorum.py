"""Loss of a majority stops writes on the cut-off side at once, with a clear error, never a
hang (cluster/state/quorum.py): on a 3-member cluster in namespaces, the leader
partitioned alone refuses `corral profile create` fast with "cluster has no quorum: 1 of 3
voters reachable" (and fresh reads just as fast, as DESIGN §6.7 wants no stale
state), while the other two elect a leader and
take writes; after the heal, writes work everywhere and the refused profile never
appears. Then, with two members killed -9, the survivor refuses writes the same way."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest

from devtools import nemesis
from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.cluster.test_nemesis import _has_profile, _leader, _until
from tests.integration.api import Api

pytestmark = pytest.mark.real

MESSAGE = "cluster has no quorum: 1 of 3 voters reachable"
DETECT_SECONDS = 4.0  # check-quorum (1 s) + the grace (2 s), plus slack for a busy machine
REFUSE_SECONDS = 3.0  # one CLI run, mostly its own start-up


def _raft(member: DaemonProcess) -> dict[str, object]:
    status, doc = Api(str(member.socket)).call("GET", "/1.0/cluster/raft")
    assert status == 200, doc
    metadata: dict[str, object] = doc["metadata"]
    return metadata


def _writes(member: DaemonProcess, name: str) -> bool:
    """Whether ``corral profile create NAME`` through ``member`` succeeds."""
    return member.corral("profile", "create", name, check=False, timeout=30).returncode == 0


def _refused_fast(member: DaemonProcess, cut_at: float, name: str) -> None:
    """``member`` says it has no quorum within DETECT_SECONDS of the cut, and then a write
    through the CLI fails within REFUSE_SECONDS, with the message and a non-zero exit."""
    _until(lambda: _raft(member)["no_quorum"] is True, DETECT_SECONDS, "no quorum seen")
    detected = time.monotonic() - cut_at
    started = time.monotonic()
    out = member.corral("profile", "create", name, check=False, timeout=30)
    took = time.monotonic() - started
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode != 0, out
    assert MESSAGE in stderr, stderr
    assert took < REFUSE_SECONDS, took
    # A fresh read cannot be confirmed either (DESIGN §6.7: never stale state): it is
    # refused as fast, while the member's own view still answers.
    started = time.monotonic()
    status, doc = Api(str(member.socket)).call("GET", "/1.0/profiles")
    assert status == 503 and MESSAGE in doc["error"], doc
    assert time.monotonic() - started < 1.0
    assert _raft(member)["voters_reachable"] == 1
    print(f"{member.root.name}: no quorum seen {detected:.1f} s after the cut, "
          f"the write refused in {took:.2f} s")


def test_a_member_cut_off_from_the_majority_refuses_writes_fast() -> None:
    with namespace_cluster(3) as members:
        directory: Path = members[0].root.parent
        by_name = {m.root.name: m for m in members}
        leader = _leader(by_name["m1"])
        assert leader in by_name
        follower, other = sorted(n for n in by_name if n != leader)

        # The leader alone: check-quorum deposes it, then it refuses writes.
        nemesis.partition(directory, [leader])
        try:
            _refused_fast(by_name[leader], time.monotonic(), "refused")
            _until(lambda: _leader(by_name[other]) in (follower, other), 20, "a new leader")
            by_name[other].corral("profile", "create", "majority-side")
            assert _raft(by_name[other])["no_quorum"] is False
        finally:
            nemesis.heal(directory)
        for index, member in enumerate(members):  # after reconnecting, everyone writes
            _until(partial(_writes, member, f"healed-{index}"), 30,
                   f"a write through {member.root.name}")
        for member in members:
            _until(partial(_has_profile, member, "healed-2"), 20, "replicated")
            assert _has_profile(member, "majority-side")
            assert not _has_profile(member, "refused")

        # Two of three killed -9: the survivor (a follower) refuses writes.
        leader = _leader(by_name["m1"])
        assert leader in by_name
        survivor = next(n for n in sorted(by_name) if n != leader)
        killed = [n for n in by_name if n != survivor]
        for name in killed:
            nemesis.kill(directory, name)
        _refused_fast(by_name[survivor], time.monotonic(), "refused-alone")
        for name in killed:
            nemesis.start(directory, name)
        _until(partial(_writes, by_name[survivor], "back"), 30,
               "a write once the others are back")
        assert not any(_has_profile(m, "refused-alone") for m in members)
