"""The fencing lease file (round trip, torn and foreign files), processes named by pid
and start time, and SelfFence on an injected clock."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.fencing import proc
from node_agent.fencing.fence import SelfFence, hard_stop, listed_process, write_member_lease
from node_agent.fencing.lease_file import Lease, Listed, lease_path, read_lease, write_lease


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process to name and to kill."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_lease_round_trips_through_its_file(tmp_path: Path) -> None:
    lease = Lease(123, 4567.25, (Listed("c1", "lxc", 42, 999), Listed("v1", "qemu", 43, 1000)),
                  ("c2",), 77, "boot")
    write_lease(lease_path(tmp_path), lease)
    assert read_lease(lease_path(tmp_path)) == lease
    assert [p.name for p in (tmp_path / "fencing").iterdir()] == ["lease.json"]  # no tmp left


def test_a_missing_torn_or_foreign_file_reads_as_no_lease(tmp_path: Path) -> None:
    path = lease_path(tmp_path)
    assert read_lease(path) is None
    write_lease(path, Lease(1, 2.0, (Listed("c1", "lxc", 42, 999),)))
    whole = path.read_bytes()
    for cut in range(len(whole)):
        path.write_bytes(whole[:cut])
        assert read_lease(path) is None, whole[:cut]
    foreigns: list[object] = [
        [], {"daemon_pid": "1", "deadline": 2.0}, {"daemon_pid": 1, "deadline": True},
        {"daemon_pid": 1, "deadline": 2.0, "instances": [{"name": "c1"}]},
        {"daemon_pid": 1, "deadline": 2.0,
         "instances": [{"name": "c1", "kind": "docker", "pid": 1, "starttime": 1}]},
        {"daemon_pid": 1, "deadline": 2.0, "fenced": [3]}]
    for foreign in foreigns:
        path.write_text(json.dumps(foreign))
        assert read_lease(path) is None, foreign


def test_a_process_is_known_by_its_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    start = proc.starttime(sleeper.pid)
    assert start is not None and proc.alive(sleeper.pid, start)
    assert not proc.alive(sleeper.pid, start + 1)
    assert not proc.kill_if_same(sleeper.pid, start + 1)  # another process with that pid
    assert sleeper.poll() is None
    assert proc.kill_if_same(sleeper.pid, start)
    assert sleeper.wait(timeout=5) == -9
    assert proc.starttime(sleeper.pid) is None
    assert not proc.kill_if_same(sleeper.pid, start)  # gone: nothing to do


def test_the_daemon_writes_its_lease_and_hard_stops_the_listed(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    item = listed_process("c1", "lxc", sleeper.pid)
    assert item is not None and listed_process("c2", "lxc", 0) is None
    lease = write_member_lease(tmp_path, 55.5, [item], {"c3"})
    assert read_lease(lease_path(tmp_path)) == lease
    assert lease.boot_id == proc.boot_id() != "" and lease.fenced == ("c3",)
    assert lease.daemon_starttime == proc.starttime(lease.daemon_pid)
    stale = Listed("c1", "lxc", sleeper.pid, item.starttime - 1)
    assert hard_stop([stale]) == [] and sleeper.poll() is None
    assert hard_stop([item]) == [item]
    assert sleeper.wait(timeout=5) == -9


def test_a_fence_is_held_from_the_first_acknowledged_beat_for_a_lease_from_its_sending() -> None:
    clock = Clock(100.0)
    fence = SelfFence(3.0, clock)
    assert fence.fenced() and fence.expired(100.0 + 1e-9)  # a new daemon holds nothing
    assert fence.since() == 100.0
    fence.renewed(100.5)  # sent at 100.5, acknowledged later
    clock.now = 101.0
    assert not fence.fenced() and fence.since() is None
    assert fence.remaining() == pytest.approx(2.5)
    fence.renewed(100.2)  # an older beat acknowledged late shortens nothing
    assert fence.deadline == 103.5
    clock.now = 103.5
    assert not fence.fenced()
    clock.now = 103.6
    assert fence.fenced() and fence.expired() and fence.since() == 103.5
    fence.renewed(103.6)
    assert not fence.fenced()


def test_a_carried_deadline_keeps_the_old_processes_unfenced_but_starts_nothing() -> None:
    clock = Clock(100.0)
    fence = SelfFence(3.0, clock, carried=101.0)
    assert not fence.expired() and fence.fenced()  # no kill yet; no start either
    clock.now = 101.5
    assert fence.expired()
    # a carried deadline is never more than one lease from now (another boot's clock...)
    assert SelfFence(3.0, Clock(100.0), carried=1e9).deadline == 103.0


def test_a_shorter_lease_binds_at_once_a_longer_one_from_the_next_beat() -> None:
    clock = Clock(10.0)
    fence = SelfFence(8.0, clock)
    fence.renewed(10.0)
    assert fence.deadline == 18.0
    fence.set_lease(3.0)
    assert fence.deadline == 13.0
    fence.set_lease(5.0)
    assert fence.deadline == 13.0
    fence.renewed(10.5)
    assert fence.deadline == 15.5
