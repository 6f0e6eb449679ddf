"""``devtools.ha_probe.hosts_running``: a container runs where its ``[lxc monitor]`` lives,
a VM where its QEMU does, whatever corral says; zombies and other members' instances of
the same name differ."""

from __future__ import annotations

from pathlib import Path

from devtools.ha_probe import hosts_running
from devtools.host_kill import Proc

ROOTS = {"m1": Path("/tmp/c/m1"), "m2": Path("/tmp/c/m2"), "m10": Path("/tmp/c/m10")}


def proc(pid: int, cmdline: str, state: str = "S") -> Proc:
    return Proc(pid, 1, state, cmdline, frozenset(), ())


def test_monitors_name_the_member_and_zombies_do_not_count() -> None:
    procs = [proc(1, "[lxc monitor] /tmp/c/m1/containers ha1 "),
             proc(2, "[lxc monitor] /tmp/c/m10/containers ha1", state="Z"),
             proc(3, "[lxc monitor] /tmp/c/m2/containers ha10"),
             proc(4, "sh -c echo /tmp/c/m2/containers ha1")]
    assert hosts_running(procs, ROOTS, "ha1") == ["m1"]
    assert hosts_running(procs, ROOTS, "ha10") == ["m2"]


def test_two_monitors_are_two_hosts() -> None:
    procs = [proc(1, "[lxc monitor] /tmp/c/m1/containers ha1"),
             proc(2, "[lxc monitor] /tmp/c/m2/containers ha1")]
    assert hosts_running(procs, ROOTS, "ha1") == ["m1", "m2"]


def test_a_starting_containers_forked_init_is_the_same_host() -> None:
    procs = [proc(1, "[lxc monitor] /tmp/c/m2/containers ha1"),
             proc(2, "[lxc monitor] /tmp/c/m2/containers ha1")]
    assert hosts_running(procs, ROOTS, "ha1") == ["m2"]


def test_a_vm_runs_where_its_qemu_names_the_members_pid_file() -> None:
    procs = [proc(1, "/usr/bin/qemu-system-x86_64 -name v1 -daemonize -pidfile "
                     "/tmp/c/m1/vms/v1/qemu.pid -D /tmp/c/m1/vms/v1/qemu.log"),
             proc(2, "qemu-system-x86_64 -name v1 -pidfile /tmp/c/m10/vms/v1/qemu.pid",
                  state="Z"),
             proc(3, "qemu-system-x86_64 -name v10 -pidfile /tmp/c/m2/vms/v10/qemu.pid"),
             proc(4, "cat /tmp/c/m2/vms/v1/qemu.pid")]
    assert hosts_running(procs, ROOTS, "v1") == ["m1"]
    assert hosts_running(procs, ROOTS, "v10") == ["m2"]
