"""VMs moving between two namespace members: a running VM migrates live and never
reboots (a counter in its RAM goes on, its boot id stays, its disk comes along); a
migration that cannot reach the target leaves it running where it was; a stopped VM
moves cold with its snapshots; either way its disk ends up on the target's storage pool.
Evacuation migrates a running VM live and restore brings it back. QEMU's streams are TLS
(the operation's figures say so)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness import DaemonProcess
from devtools.netns import enter_argv
from tests.cluster.conftest import namespace_cluster
from tests.integration.api import Api

pytestmark = pytest.mark.real

COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done "
           "</dev/null >/dev/null 2>&1 &")


@pytest.fixture(scope="module")
def pair() -> Iterator[list[DaemonProcess]]:
    with namespace_cluster(2) as started:
        started[0].corral("image", "build", "busybox", "--vm", timeout=300)
        yield started


def _sh(daemon: DaemonProcess, name: str, script: str) -> str:
    out = daemon.corral("exec", name, "--", "sh", "-c", script, timeout=60).stdout
    return out.decode().strip()


def _wait_for_agent(daemon: DaemonProcess, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.corral("exec", name, "--", "true", check=False).returncode != 0:
        assert time.monotonic() < deadline, f"the agent in {name} never answered"
        time.sleep(1.0)


def _instance(daemon: DaemonProcess, name: str) -> dict[str, object]:
    found: dict[str, object] = Api(str(daemon.socket)).get(f"/1.0/instances/{name}")
    return found


def _qemu_running(daemon: DaemonProcess, name: str) -> bool:
    return (daemon.root / "vms" / name / "qemu.pid").exists()


def _volume(daemon: DaemonProcess, name: str) -> Path:
    """The VM's disk directory on the member's default pool."""
    return daemon.root / "storage-pools" / "default" / "virtual-machines" / name


def _disk_only_on(here: DaemonProcess, gone: DaemonProcess, name: str) -> None:
    """The VM's disk is on ``here``'s pool, and nothing of it is left on ``gone``."""
    disk = _volume(here, name) / "root.qcow2"
    assert disk.is_file() and not (here.root / "vms" / name / "root.qcow2").exists()
    backing = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                         str(disk)], capture_output=True, text=True,
                                        check=True).stdout)["backing-filename"]
    assert backing.startswith(str(here.root))  # this member's copy of the image
    assert not (gone.root / "vms" / name).exists() and not _volume(gone, name).exists()


def test_a_running_vm_migrates_live_and_keeps_running(pair: list[DaemonProcess]) -> None:
    m1, m2 = pair
    m1.corral("launch", "busybox-vm", "lv1", "--vm", "--target", "m1",
              "-c", "limits.memory=256MiB", "-c", "migration.downtime=100", timeout=300)
    try:
        _wait_for_agent(m1, "lv1")
        _sh(m1, "lv1", "echo precious > /mnt/root/keep && sync")
        _sh(m1, "lv1", COUNTER)
        boot_id = _sh(m1, "lv1", "cat /proc/sys/kernel/random/boot_id")
        time.sleep(0.5)
        before = int(_sh(m1, "lv1", "cat /tmp/counter"))

        m1.corral("move", "lv1", "--target", "m2", timeout=600)

        inst = _instance(m1, "lv1")
        assert (inst["location"], inst["status"]) == ("m2", "Running")
        _wait_for_agent(m1, "lv1", 60)  # TCG retranslates on the new QEMU: slow at first
        after = int(_sh(m1, "lv1", "cat /tmp/counter"))  # relayed to m2
        assert after > before
        time.sleep(0.5)
        assert int(_sh(m2, "lv1", "cat /tmp/counter")) > after  # the loop still runs
        assert _sh(m2, "lv1", "cat /proc/sys/kernel/random/boot_id") == boot_id
        assert _sh(m2, "lv1", "cat /mnt/root/keep") == "precious"
        assert _qemu_running(m2, "lv1")
        _disk_only_on(m2, m1, "lv1")  # the source's QEMU and files are gone

        # Bad moves change nothing.
        frozen = m1.corral("move", "lv1", "--target", "m2", check=False)
        assert frozen.returncode == 1 and b"already on member m2" in frozen.stderr
        m1.corral("pause", "lv1")
        paused = m1.corral("move", "lv1", "--target", "m1", check=False)
        assert paused.returncode == 1 and b"Resume the virtual machine" in paused.stderr
        m1.corral("start", "lv1")
        assert _instance(m1, "lv1")["location"] == "m2"

        # Back through the API (LXD's migration POST), from the QEMU that received it: its
        # credentials were dropped and load again; QEMU's parameters named them (TLS).
        api = Api(str(m1.socket))
        _, doc = api.call("POST", "/1.0/instances/lv1?target=m1", {"migration": True})
        op = api.wait(doc["operation"], timeout=600)
        assert op["status"] == "Success", op
        assert op["metadata"]["live_migration"]["tls"] is True
        assert _instance(m1, "lv1")["location"] == "m1"
        assert _sh(m1, "lv1", "cat /proc/sys/kernel/random/boot_id") == boot_id
    finally:
        m1.corral("delete", "--force", "lv1", check=False)


def test_a_migration_that_cannot_reach_the_target_leaves_the_vm_running(
        pair: list[DaemonProcess]) -> None:
    """The target refuses QEMU's connections (NBD and migration ports; Raft and HTTPS
    still pass): the move fails and the guest runs on at the source, untouched."""
    m1, m2 = pair
    m1.corral("launch", "busybox-vm", "lv2", "--vm", "--target", "m1",
              "-c", "limits.memory=256MiB", timeout=300)
    assert m2.netns is not None
    block = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "20000:65535", "-m",
             "conntrack", "--ctstate", "NEW", "-j", "REJECT"]
    try:
        _wait_for_agent(m1, "lv2")
        _sh(m1, "lv2", COUNTER)
        boot_id = _sh(m1, "lv2", "cat /proc/sys/kernel/random/boot_id")
        subprocess.run(enter_argv(m2.netns, block), check=True)
        try:
            failed = m1.corral("move", "lv2", "--target", "m2", check=False, timeout=600)
        finally:
            unblock = ["-D" if part == "-I" else part for part in block]
            subprocess.run(enter_argv(m2.netns, unblock), check=True)
        assert failed.returncode == 1, failed.stdout
        inst = _instance(m1, "lv2")
        assert (inst["location"], inst["status"]) == ("m1", "Running")
        before = int(_sh(m1, "lv2", "cat /tmp/counter"))
        time.sleep(0.5)
        assert int(_sh(m1, "lv2", "cat /tmp/counter")) > before
        assert _sh(m1, "lv2", "cat /proc/sys/kernel/random/boot_id") == boot_id
        assert not (m2.root / "vms" / "lv2").exists() and not _volume(m2, "lv2").exists()
    finally:
        m1.corral("delete", "--force", "lv2", check=False)


def test_a_stopped_vm_moves_cold_with_its_snapshots(pair: list[DaemonProcess]) -> None:
    """The VM's volume (overlay with its internal snapshots, snapshot names) goes over to
    the target's pool; there the overlay is repointed at that member's copy of the
    image."""
    m1, m2 = pair
    m1.corral("launch", "busybox-vm", "lv3", "--vm", "--target", "m1",
              "-c", "limits.memory=256MiB", timeout=300)
    try:
        _wait_for_agent(m1, "lv3")
        _sh(m1, "lv3", "echo kept > /mnt/root/keep && sync")
        m1.corral("stop", "lv3", timeout=120)
        m1.corral("snapshot", "lv3", "s1")
        m1.corral("move", "lv3", "--target", "m2", timeout=300)
        inst = _instance(m1, "lv3")
        assert (inst["location"], inst["status"]) == ("m2", "Stopped")
        _disk_only_on(m2, m1, "lv3")
        assert (m2.root / "vms" / "lv3" / "config.json").is_file()  # defined on arrival
        assert (_volume(m2, "lv3") / "snapshots.json").is_file()
        m1.corral("start", "lv3", timeout=120)
        _wait_for_agent(m1, "lv3")
        assert _sh(m1, "lv3", "cat /mnt/root/keep") == "kept"
        snapshots = Api(str(m2.socket)).get("/1.0/instances/lv3/snapshots")
        assert [s.rsplit("/", 1)[-1] for s in snapshots] == ["s1"]
        m1.corral("stop", "lv3", "--force", timeout=120)
        m1.corral("restore", "lv3", "s1", timeout=120)  # the snapshot came along
    finally:
        m1.corral("delete", "--force", "lv3", check=False)
    assert not (m2.root / "vms" / "lv3").exists() and not _volume(m2, "lv3").exists()


def test_evacuation_migrates_a_running_vm_live_and_restore_brings_it_back(
        pair: list[DaemonProcess]) -> None:
    m1, _ = pair
    m1.corral("launch", "busybox-vm", "lv4", "--vm", "--target", "m1",
              "-c", "limits.memory=256MiB", timeout=300)
    try:
        _wait_for_agent(m1, "lv4")
        boot_id = _sh(m1, "lv4", "cat /proc/sys/kernel/random/boot_id")
        m1.corral("cluster", "evacuate", "m1", "--force", timeout=600)
        inst = _instance(m1, "lv4")
        assert (inst["location"], inst["status"]) == ("m2", "Running")
        m1.corral("cluster", "restore", "m1", "--force", timeout=600)
        inst = _instance(m1, "lv4")
        assert (inst["location"], inst["status"]) == ("m1", "Running")
        assert _sh(m1, "lv4", "cat /proc/sys/kernel/random/boot_id") == boot_id  # no reboot
    finally:
        m1.corral("cluster", "restore", "m1", "--force", check=False, timeout=600)
        m1.corral("delete", "--force", "lv4", check=False)
