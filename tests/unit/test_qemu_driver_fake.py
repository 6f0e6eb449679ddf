"""QemuDriver's state machine with fakes at its process boundaries: a fake QMP server on
the VM's socket and a stand-in process (a sleeping Python) named in the pid file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.drivers.base import DriverError, InstanceDefinition, InvalidState, NotFound
from node_agent.drivers.qemu import QemuDriver
from node_agent.drivers.qemu import cmdline as cl
from tests.unit.test_qemu_qmp import FakeQmp

IMAGE = {"kernel": "/img/kernel", "initrd": "/img/initrd", "rootfs": "/img/rootfs.img"}


class FakeVm:
    """A "QEMU": a process whose argv names the QMP socket, and QMP answers about it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.run_state = "running"
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: FakeQmp | None = None

    def start(self, answers: bool = True) -> None:
        qmp_path = self.directory / cl.QMP
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                         str(qmp_path)])
        (self.directory / cl.PIDFILE).write_text(f"{self.process.pid}\n")
        if answers:
            self.qmp = FakeQmp(qmp_path, self.handle)

    def handle(self, request: dict[str, object]) -> list[dict[str, object]]:
        command = request["execute"]
        if command == "query-status":
            return [{"return": {"status": self.run_state}}]
        if command in ("stop", "cont"):
            self.run_state = "paused" if command == "stop" else "running"
        if command in ("quit", "system_powerdown"):
            self.exit()
        return [{"return": {}}]

    def exit(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def commands(self) -> list[object]:
        return [r["execute"] for r in (self.qmp.seen if self.qmp else [])
                if r["execute"] not in ("qmp_capabilities", "query-status")]

    def close(self) -> None:
        self.exit()
        if self.qmp is not None:
            self.qmp.close()


@pytest.fixture
def driver(tmp_path: Path) -> QemuDriver:
    return QemuDriver(tmp_path / "vms", accel="tcg")


@pytest.fixture
def vm(driver: QemuDriver) -> Iterator[FakeVm]:
    directory = driver.vmpath / "vm1"
    directory.mkdir(parents=True)
    spec = cl.build_spec(InstanceDefinition("vm1", Path("/img")), directory, 1 << 33, IMAGE)
    (directory / cl.CONFIG).write_text(json.dumps(spec.to_json()))
    fake = FakeVm(directory)
    yield fake
    fake.close()


def test_a_defined_vm_without_process_is_stopped(driver: QemuDriver, vm: FakeVm) -> None:
    assert driver.status("vm1") == "Stopped"
    assert driver.state("vm1")["pid"] == 0 and driver.state("vm1")["status_code"] == 102
    for call in (driver.freeze, driver.unfreeze):
        with pytest.raises(InvalidState):
            call("vm1")
    with pytest.raises(InvalidState):
        driver.stop("vm1", force=True, timeout=0)


def test_unknown_vms_are_not_found(driver: QemuDriver) -> None:
    for name in ("nope", "../etc"):
        with pytest.raises(NotFound):
            driver.status(name)


def test_a_reused_pid_is_not_taken_for_the_vm(driver: QemuDriver, vm: FakeVm) -> None:
    (vm.directory / cl.PIDFILE).write_text("1\n")
    assert driver.status("vm1") == "Stopped"


def test_a_running_vm_freezes_and_unfreezes_through_qmp(driver: QemuDriver,
                                                        vm: FakeVm) -> None:
    vm.start()
    assert driver.status("vm1") == "Running"
    state = driver.state("vm1")
    assert state["pid"] == vm.process.pid  # type: ignore[union-attr]
    assert state["memory"]["usage"] > 0 and state["network"] == {}
    driver.freeze("vm1")
    assert driver.status("vm1") == "Frozen"
    driver.unfreeze("vm1")
    assert driver.status("vm1") == "Running"
    assert vm.commands() == ["stop", "cont"]
    with pytest.raises(InvalidState):
        driver.delete("vm1")


def test_a_live_process_without_qmp_is_an_error(driver: QemuDriver, vm: FakeVm) -> None:
    vm.start(answers=False)
    assert driver.status("vm1") == "Error"


def test_a_clean_stop_uses_the_power_button(driver: QemuDriver, vm: FakeVm) -> None:
    vm.start()
    driver.stop("vm1", force=False, timeout=5)
    assert vm.commands() == ["system_powerdown"]
    assert driver.status("vm1") == "Stopped"
    assert not (vm.directory / cl.PIDFILE).exists()


def test_a_frozen_vm_is_resumed_before_the_power_button(driver: QemuDriver,
                                                        vm: FakeVm) -> None:
    vm.start()
    vm.run_state = "paused"
    driver.stop("vm1", force=False, timeout=5)
    assert vm.commands() == ["cont", "system_powerdown"]


@pytest.mark.parametrize(("force", "timeout"), [(True, 30), (False, 0)])
def test_force_and_zero_timeout_quit_at_once(driver: QemuDriver, vm: FakeVm, force: bool,
                                             timeout: float) -> None:
    vm.start()
    driver.stop("vm1", force=force, timeout=timeout)
    assert vm.commands() == ["quit"]
    assert driver.status("vm1") == "Stopped"


def test_a_qemu_deaf_to_qmp_is_killed(driver: QemuDriver, vm: FakeVm) -> None:
    vm.start(answers=False)
    driver.stop("vm1", force=True, timeout=0)
    assert vm.process is not None and vm.process.wait(timeout=10) != 0
    assert driver.status("vm1") == "Stopped"


def test_delete_removes_a_stopped_vm(driver: QemuDriver, vm: FakeVm) -> None:
    driver.delete("vm1")
    assert not vm.directory.exists()
    with pytest.raises(NotFound):
        driver.status("vm1")


def test_a_redefined_running_vm_is_stopped_and_reported_by_its_running_spec(
        driver: QemuDriver, vm: FakeVm) -> None:
    (vm.directory / cl.RUNNING_CONFIG).write_text((vm.directory / cl.CONFIG).read_text())
    vm.start()
    spec = json.loads((vm.directory / cl.CONFIG).read_text())
    spec["nics"] = [{"device": "eth0", "bridge": "nobr0", "tap": "vtnotcreated0",
                     "hwaddr": "00:16:3e:00:00:01"}]
    (vm.directory / cl.CONFIG).write_text(json.dumps(spec))  # as define does
    assert driver.state("vm1")["network"] == {}  # what runs has no NIC
    driver.stop("vm1", force=True, timeout=0)
    assert not (vm.directory / cl.RUNNING_CONFIG).exists()


def test_rename_moves_a_stopped_vm_and_renames_its_taps(driver: QemuDriver,
                                                        vm: FakeVm) -> None:
    spec = json.loads((vm.directory / cl.CONFIG).read_text())
    spec["nics"] = [{"device": "eth0", "bridge": "br0", "tap": "vtold0",
                     "hwaddr": "00:16:3e:00:00:01"}]
    (vm.directory / cl.CONFIG).write_text(json.dumps(spec))
    driver.rename("vm1", "vm2")
    moved = json.loads((driver.vmpath / "vm2" / cl.CONFIG).read_text())
    assert moved["name"] == "vm2" and moved["directory"] == str(driver.vmpath / "vm2")
    assert moved["nics"][0]["tap"] == cl.tap_name(driver.vmpath / "vm2", 0)
    assert driver.status("vm2") == "Stopped" and not vm.directory.exists()


def test_a_start_that_fails_leaves_nothing_behind(driver: QemuDriver, vm: FakeVm) -> None:
    spec = json.loads((vm.directory / cl.CONFIG).read_text())
    spec["nics"] = [{"device": "eth0", "bridge": "nobr0x", "tap": "vtnotmade0",
                     "hwaddr": "00:16:3e:00:00:01"}]
    (vm.directory / cl.CONFIG).write_text(json.dumps(spec))
    with pytest.raises(DriverError, match="bridge 'nobr0x' does not exist"):
        driver.start("vm1")
    assert sorted(p.name for p in vm.directory.iterdir()) == [cl.CONFIG]
