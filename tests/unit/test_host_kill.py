"""Which processes belong to a dev-cluster host (devtools/host_kill.py), from a table."""

from __future__ import annotations

import os
from pathlib import Path

from devtools.host_kill import Proc, host_pids, read_proc

ROOT = Path("/tmp/dc/m2")
PREFIX = "corral-1234abcd"


def _proc(pid: int, ppid: int = 1, cmdline: str = "", env: tuple[str, ...] = (),
          cgroup: str = "/", state: str = "S") -> Proc:
    return Proc(pid, ppid, state, cmdline, frozenset(env), (cgroup,))


TABLE = [
    _proc(10, cmdline="python -m corral_cli.main daemon", env=("CORRAL_DIR=/tmp/dc/m2",)),
    _proc(11, 10, "dnsmasq --conf-file=x", env=("CORRAL_DIR=/tmp/dc/m2",)),
    _proc(20, cmdline="[lxc monitor] /tmp/dc/m2/containers c1"),
    _proc(21, 20, "/sbin/init", cgroup=f"/{PREFIX}/c1/lxc.payload.c1"),
    _proc(22, 21, "sh -c sleep", cgroup=f"/{PREFIX}/c1/lxc.payload.c1/sub"),
    _proc(23, 22, "sleep 100"),  # moved out of the cgroup: still a descendant
    _proc(30, cmdline="qemu-system-x86_64 -pidfile /tmp/dc/m2/vms/v1/qemu.pid"),
    _proc(40, cmdline="python -m corral_cli.main daemon", env=("CORRAL_DIR=/tmp/dc/m1",)),
    _proc(41, cmdline="[lxc monitor] /tmp/dc/m1/containers c1"),
    _proc(42, 41, "/sbin/init", cgroup="/corral-99999999/c1/lxc.payload.c1"),
    _proc(50, cmdline="[lxc monitor] /tmp/dc/m22/containers c1"),  # another root's prefix
    _proc(60, cmdline="corral dev-cluster kill m2 --host", env=("CORRAL_DIR=/tmp/dc/m2",)),
    _proc(70, cmdline="[lxc monitor] /tmp/dc/m2/containers c9", state="Z"),
]


def test_a_host_is_its_daemon_children_monitors_containers_and_vms() -> None:
    assert host_pids(TABLE, ROOT, PREFIX, spare={60}) == {10, 11, 20, 21, 22, 23, 30}


def test_other_members_a_longer_root_and_zombies_are_never_picked() -> None:
    found = host_pids(TABLE, ROOT, PREFIX)
    assert not found & {40, 41, 42, 50, 70}
    assert 60 in found  # only spared when asked


def test_this_process_reads_back_from_proc() -> None:
    me = read_proc(os.getpid())
    assert me is not None and me.pid == os.getpid() and "python" in me.cmdline
    assert read_proc(2**22 + 7) is None
