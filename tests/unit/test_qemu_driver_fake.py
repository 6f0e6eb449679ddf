"""QemuDriver's state machine with fakes at its process boundaries: a fake QMP server on
the VM's socket and a stand-in process (a sleeping Python) named in the pid file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.drivers.base import DriverError, InstanceDefinition, InvalidState, NotFound
from node_agent.drivers.qemu import QemuDriver, qcow2
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
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import time; print(flush=True); time.sleep(60)",
             str(qmp_path)], stdout=subprocess.PIPE)
        # Popen returns once exec has begun, but the kernel sets the new argv (what
        # /proc/PID/cmdline shows, and what the driver checks the pid against) a moment
        # later: on a loaded host the driver read an empty cmdline and took the VM for
        # stopped. The child's first line proves it runs with its argv, as a real QEMU
        # does by the time it writes its pid file.
        assert self.process.stdout is not None and self.process.stdout.readline() == b"\n"
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
            if self.process.stdout is not None:
                self.process.stdout.close()

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


def test_a_vm_defined_by_an_older_daemon_is_found_running_with_its_disk_in_its_directory(
        driver: QemuDriver, vm: FakeVm) -> None:
    saved = json.loads((vm.directory / cl.CONFIG).read_text())
    del saved["volume"]  # config.json as an older daemon wrote it
    (vm.directory / cl.CONFIG).write_text(json.dumps(saved))
    (vm.directory / cl.DISK).write_bytes(b"\0" * 4096)
    vm.start()
    assert driver.status("vm1") == "Running"
    assert driver.volume_dir("vm1") == vm.directory
    assert driver.state("vm1")["disk"]["root"]["usage"] > 0


# -- a VM whose disk lives on a storage pool ---------------------------------------------------


@pytest.fixture
def pooled(driver: QemuDriver, tmp_path: Path) -> Path:
    """A stopped VM "vm1" with its volume (a stand-in disk, snapshot names) on a pool;
    returns the volume directory."""
    directory, volume = driver.vmpath / "vm1", tmp_path / "pool" / "virtual-machines" / "vm1"
    for path in (directory, volume):
        path.mkdir(parents=True)
    definition = InstanceDefinition("vm1", Path("/img"), volume=volume)
    spec = cl.build_spec(definition, directory, 1 << 33, IMAGE)
    (directory / cl.CONFIG).write_text(json.dumps(spec.to_json()))
    (volume / cl.DISK).write_bytes(b"disk")
    (volume / "snapshots.json").write_text('{"version": 1, "snapshots": {"s1": "corral-1"}}')
    return volume


def test_snapshots_are_read_from_the_volume(driver: QemuDriver, pooled: Path) -> None:
    assert driver.volume_dir("vm1") == pooled
    assert driver.list_snapshots("vm1") == ["s1"]


def test_delete_removes_the_volume_and_the_directory(driver: QemuDriver, pooled: Path) -> None:
    driver.delete("vm1")
    assert not pooled.exists() and not (driver.vmpath / "vm1").exists()
    assert driver.names() == []


def test_rename_renames_the_volume_where_it_is(driver: QemuDriver, pooled: Path) -> None:
    driver.rename("vm1", "vm2")
    moved = pooled.with_name("vm2")
    assert (moved / cl.DISK).read_bytes() == b"disk" and not pooled.exists()
    assert driver.volume_dir("vm2") == moved and driver.list_snapshots("vm2") == ["s1"]
    assert json.loads((driver.vmpath / "vm2" / cl.CONFIG).read_text())["directory"] == \
        str(driver.vmpath / "vm2")


@pytest.mark.parametrize("taken", ["directory", "volume"])
def test_rename_onto_a_name_taken_in_either_place_changes_nothing(
        driver: QemuDriver, pooled: Path, taken: str) -> None:
    (driver.vmpath / "vm2" if taken == "directory" else pooled.with_name("vm2")).mkdir()
    with pytest.raises(InvalidState, match="already exists"):
        driver.rename("vm1", "vm2")
    assert driver.volume_dir("vm1") == pooled and (pooled / cl.DISK).is_file()


# -- define (real qemu-img) ----------------------------------------------------------------------

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="needs qemu-img (qemu-utils)")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An unpacked VM image: a small qcow2 rootfs.img, stand-in kernel and initrd."""
    image = tmp_path / "image"
    image.mkdir()
    if shutil.which("qemu-img"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image / "rootfs.img"),
                        "16M"], check=True)
    (image / "kernel").write_bytes(b"k")
    (image / "initrd").write_bytes(b"i")
    return image


@needs_qemu_img
def test_define_makes_the_overlay_in_the_volume_and_keeps_runtime_files_apart(
        driver: QemuDriver, image: Path, tmp_path: Path) -> None:
    volume = tmp_path / "pool" / "virtual-machines" / "vm1"
    driver.define(InstanceDefinition("vm1", image, volume=volume))
    assert sorted(p.name for p in volume.iterdir()) == [cl.DISK]
    assert qcow2.backing_file(volume / cl.DISK) == str(image / "rootfs.img")
    assert sorted(p.name for p in (driver.vmpath / "vm1").iterdir()) == [cl.CONFIG]
    assert driver.volume_dir("vm1") == volume


@needs_qemu_img
def test_a_disk_in_the_vm_directory_moves_to_the_volume_at_the_next_define(
        driver: QemuDriver, image: Path, tmp_path: Path) -> None:
    directory, volume = driver.vmpath / "vm1", tmp_path / "pool" / "virtual-machines" / "vm1"
    driver.define(InstanceDefinition("vm1", image))  # as an older daemon laid it out
    (directory / "snapshots.json").write_text('{"version": 1, "snapshots": {}}')
    written = (directory / cl.DISK).read_bytes()
    driver.define(InstanceDefinition("vm1", image, volume=volume))
    assert (volume / cl.DISK).read_bytes() == written and (volume / "snapshots.json").exists()
    assert sorted(p.name for p in directory.iterdir()) == [cl.CONFIG]
    assert driver.volume_dir("vm1") == volume


@needs_qemu_img
def test_a_first_define_that_fails_leaves_no_directories(
        driver: QemuDriver, image: Path, tmp_path: Path) -> None:
    (image / "rootfs.img").write_bytes(b"not a qcow2")
    volume = tmp_path / "pool" / "virtual-machines" / "vm1"
    with pytest.raises(DriverError, match="qemu-img create"):
        driver.define(InstanceDefinition("vm1", image, volume=volume))
    assert not volume.exists() and not (driver.vmpath / "vm1").exists()


@needs_qemu_img
def test_the_disk_of_a_running_vm_stays_put_until_it_is_stopped(
        driver: QemuDriver, image: Path, tmp_path: Path) -> None:
    directory, volume = driver.vmpath / "vm1", tmp_path / "pool" / "virtual-machines" / "vm1"
    driver.define(InstanceDefinition("vm1", image))  # as an older daemon laid it out
    fake = FakeVm(directory)
    try:
        fake.start()
        driver.define(InstanceDefinition("vm1", image, volume=volume))  # QEMU has it open
        assert (directory / cl.DISK).is_file() and driver.volume_dir("vm1") == directory
        driver.stop("vm1", force=True, timeout=0)
    finally:
        fake.close()
    driver.define(InstanceDefinition("vm1", image, volume=volume))
    assert (volume / cl.DISK).is_file() and not (directory / cl.DISK).exists()


@needs_qemu_img
def test_a_uefi_vm_gets_its_own_vars_copy_in_its_volume_once(
        driver: QemuDriver, image: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, template = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"c" * 4096)
    template.write_bytes(b"v" * 4096)
    monkeypatch.setattr(cl, "OVMF_CODE", code)
    monkeypatch.setattr(cl, "OVMF_VARS", template)
    for name in ("kernel", "initrd"):
        (image / name).unlink()
    volume = tmp_path / "pool" / "virtual-machines" / "vm1"
    driver.define(InstanceDefinition("vm1", image, volume=volume))
    assert sorted(p.name for p in volume.iterdir()) == [cl.VARS, cl.DISK]
    assert (volume / cl.VARS).read_bytes() == template.read_bytes()
    (volume / cl.VARS).write_bytes(b"w" * 4096)  # the guest wrote a variable
    driver.define(InstanceDefinition("vm1", image, volume=volume))
    assert (volume / cl.VARS).read_bytes() == b"w" * 4096
    assert json.loads((driver.vmpath / "vm1" / cl.CONFIG).read_text())["firmware"] == "uefi"


@needs_qemu_img
def test_an_image_with_a_kernel_but_no_initrd_is_refused(
        driver: QemuDriver, image: Path) -> None:
    (image / "initrd").unlink()
    with pytest.raises(cl.InvalidConfig, match="kernel but no initrd"):
        driver.define(InstanceDefinition("vm1", image))


def test_a_guest_in_internal_error_under_kvm_is_a_broken_accelerator(
        driver: QemuDriver, vm: FakeVm) -> None:
    vm.start()
    vm.run_state = "internal-error"
    assert driver.accelerator_failure("vm1") == ""  # not started under KVM: not our case
    (vm.directory / cl.ACCEL).write_text("kvm\n")
    assert driver.accelerator_failure("vm1") == "the guest stopped in run state internal-error"
    vm.run_state = "running"
    assert driver.accelerator_failure("vm1") == ""


def test_a_qemu_gone_with_a_kvm_error_in_its_log_is_a_broken_accelerator(
        driver: QemuDriver, vm: FakeVm) -> None:
    (vm.directory / cl.ACCEL).write_text("kvm\n")
    assert driver.accelerator_failure("vm1") == ""  # gone, nothing said: a poweroff
    (vm.directory / cl.QEMU_LOG).write_text(
        "noise\nKVM internal error. Suberror: 1\nemulation failure\n")
    assert driver.accelerator_failure("vm1") == "QEMU died: KVM internal error. Suberror: 1"
