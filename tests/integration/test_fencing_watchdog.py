"""The fencing watchdog against real LXC containers: started detached by
``ensure_watchdog``, it kills a container listed in a lease whose deadline passed (within
2 s) and exits once its daemon is gone and nothing listed lives; it kills nothing while
the lease holds, follows a new lease that a new daemon writes, and never kills a process
whose start time is not the listed one.

Each test has its own state directory (the watchdog's) and lxcpath; every container and
every watchdog a test started is gone after it, failed or not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.fencing import proc
from node_agent.fencing.lease_file import Lease, Listed, lease_path, write_lease
from node_agent.fencing.watchdog import (
    ensure_watchdog,
    fenced_file,
    log_file,
    running_watchdog,
)
from tests.integration import test_lxc_driver as lxc_lab
from tests.integration.test_lxc_driver import Lab

pytestmark = pytest.mark.real
# The LXC driver tests' fixtures: root and tools, the idmap, a private lxcpath torn down.
_needs_root_and_tools, idmap, lab = lxc_lab._needs_root_and_tools, lxc_lab.idmap, lxc_lab.lab


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A daemon's state directory; its watchdog (if any is left) is killed after."""
    path = Path(tempfile.mkdtemp(prefix="corral-fence-", dir="/tmp"))
    try:
        yield path
    finally:
        pid = running_watchdog(path)
        if pid:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def _until(predicate: Callable[[], object], seconds: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, f"not within {seconds:g} s: {what}"
        time.sleep(0.02)
    return time.monotonic() - started


def _gone_daemon() -> tuple[int, int]:
    """The pid and start time of a process that has exited (a dead daemon)."""
    child = subprocess.Popen(["sleep", "60"])
    start = proc.starttime(child.pid)
    child.kill()
    child.wait()
    assert start is not None
    return child.pid, start


def _running(lab: Lab, name: str) -> Listed:
    lab.define(name)
    lab.driver.start(name)
    pid = lab.driver.pid(name)
    start = proc.starttime(pid)
    assert pid > 0 and start is not None
    return Listed(name, "lxc", pid, start)


def _lease(daemon: tuple[int, int], deadline: float, *listed: Listed) -> Lease:
    return Lease(daemon[0], deadline, listed, (), daemon[1], proc.boot_id())


def _watchdog_gone(pid: int) -> bool:
    return proc.starttime(pid) is None


def test_a_lease_past_its_deadline_stops_the_container_and_the_watchdog_exits(
        lab: Lab, state_dir: Path) -> None:
    listed = _running(lab, "c1")
    write_lease(lease_path(state_dir), _lease(_gone_daemon(), time.monotonic() - 0.1, listed))
    pid = ensure_watchdog(state_dir)
    took = _until(lambda: lab.driver.status("c1") == "Stopped", 2.0, "c1 stopped")
    print(f"\nfenced in {took:.2f} s")
    _until(lambda: _watchdog_gone(pid), 5.0, "the watchdog exits")
    records = json.loads(fenced_file(state_dir).read_text())
    assert [(r["name"], r["pid"]) for r in records] == [("c1", listed.pid)]
    assert f"fenced lxc c1: killed pid {listed.pid}" in log_file(state_dir).read_text()


def test_a_lease_that_holds_kills_nothing_and_a_new_daemons_lease_is_followed(
        lab: Lab, state_dir: Path) -> None:
    listed = _running(lab, "c1")
    write_lease(lease_path(state_dir), _lease(_gone_daemon(), time.monotonic() + 60, listed))
    pid = ensure_watchdog(state_dir)
    assert ensure_watchdog(state_dir) == pid  # one per state directory
    time.sleep(1.0)
    assert lab.driver.status("c1") == "Running" and not _watchdog_gone(pid)
    # A new daemon (this test process) takes over with a lease that has run out.
    me = (os.getpid(), proc.starttime(os.getpid()) or 0)
    write_lease(lease_path(state_dir), _lease(me, time.monotonic() - 0.1, listed))
    _until(lambda: lab.driver.status("c1") == "Stopped", 2.0, "c1 stopped")
    time.sleep(0.3)
    assert running_watchdog(state_dir) == pid  # its daemon lives: it stays


def test_a_pid_with_another_start_time_is_never_killed(lab: Lab, state_dir: Path) -> None:
    listed = _running(lab, "c1")
    stranger = Listed("c1", "lxc", listed.pid, listed.starttime + 1)
    write_lease(lease_path(state_dir), _lease(_gone_daemon(), time.monotonic() - 0.1, stranger))
    pid = ensure_watchdog(state_dir)
    _until(lambda: _watchdog_gone(pid), 5.0, "the watchdog exits (nothing it lists lives)")
    assert lab.driver.status("c1") == "Running"
    assert proc.alive(listed.pid, listed.starttime)
    assert not fenced_file(state_dir).exists()


def test_a_frozen_container_is_thawed_to_die(lab: Lab, state_dir: Path) -> None:
    listed = _running(lab, "c1")
    lab.driver.freeze("c1")
    assert lab.driver.status("c1") == "Frozen"
    write_lease(lease_path(state_dir), _lease(_gone_daemon(), time.monotonic() - 0.1, listed))
    pid = ensure_watchdog(state_dir)
    _until(lambda: lab.driver.status("c1") == "Stopped", 2.0, "frozen c1 stopped")
    _until(lambda: _watchdog_gone(pid), 5.0, "the watchdog exits")
