"""The watchdog's looks, driven one by one over real processes (``sleep``) and an
injected clock: it kills what the lease lists once the deadline passed, only processes
whose start time matches, keeps the last lease it could read, and says when it is done."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.fencing import proc
from node_agent.fencing.lease_file import Lease, Listed, lease_path, write_lease
from node_agent.fencing.watchdog import NO_LEASE_GRACE, Watchdog, fenced_file


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()
            child.wait()


def spawn(procs: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], int]:
    child = subprocess.Popen(["sleep", "60"])
    procs.append(child)
    start = proc.starttime(child.pid)
    assert start is not None
    return child, start


def gone_daemon(procs: list[subprocess.Popen[bytes]]) -> tuple[int, int]:
    child, start = spawn(procs)
    child.kill()
    child.wait()
    return child.pid, start


def test_it_kills_the_listed_once_the_deadline_passed_and_then_is_done(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    clock = Clock()
    (victim, start), (other, other_start) = spawn(procs), spawn(procs)
    pid, daemon_start = gone_daemon(procs)
    listed = (Listed("c1", "lxc", victim.pid, start),
              Listed("c2", "lxc", other.pid, other_start + 1))  # not that process
    write_lease(lease_path(tmp_path), Lease(pid, 1001.0, listed, (), daemon_start,
                                            proc.boot_id()))
    dog = Watchdog(tmp_path, clock)
    assert dog.look() and victim.poll() is None  # before the deadline
    clock.now = 1001.5
    assert not dog.look()  # killed; the daemon is gone and nothing listed lives
    assert victim.wait(timeout=5) == -9
    assert other.poll() is None
    records = json.loads(fenced_file(tmp_path).read_text())
    assert [(r["name"], r["pid"]) for r in records] == [("c1", victim.pid)]


def test_it_keeps_the_last_lease_through_a_torn_file_and_follows_a_new_daemon(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    clock = Clock()
    victim, start = spawn(procs)
    daemon, daemon_start = spawn(procs)
    path = lease_path(tmp_path)
    write_lease(path, Lease(daemon.pid, 1001.0, (Listed("c1", "lxc", victim.pid, start),),
                            (), daemon_start, proc.boot_id()))
    dog = Watchdog(tmp_path, clock)
    assert dog.look()
    path.write_text('{"daemon_pid": 1, "dead')  # torn: the last lease stands
    clock.now = 1000.5
    assert dog.look() and victim.poll() is None
    new_daemon, new_start = spawn(procs)
    write_lease(path, Lease(new_daemon.pid, 1005.0, (Listed("c1", "lxc", victim.pid, start),),
                            (), new_start, proc.boot_id()))
    clock.now = 1002.0  # past the old deadline, not the new one
    assert dog.look() and victim.poll() is None
    assert dog.lease is not None and dog.lease.daemon_pid == new_daemon.pid
    clock.now = 1005.1
    assert dog.look()  # the daemon lives: the watchdog stays
    assert victim.wait(timeout=5) == -9


def test_a_lease_of_another_boot_is_ignored_and_no_lease_at_all_ends_the_watchdog(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    clock = Clock()
    victim, start = spawn(procs)
    write_lease(lease_path(tmp_path), Lease(1, 0.0, (Listed("c1", "lxc", victim.pid, start),),
                                            (), 0, "another-boot"))
    dog = Watchdog(tmp_path, clock)
    assert dog.look() and dog.lease is None
    clock.now += NO_LEASE_GRACE + 0.1
    assert not dog.look()
    assert victim.poll() is None
