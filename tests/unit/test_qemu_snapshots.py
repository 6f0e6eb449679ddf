"""VM disk snapshots: the names file, qemu-img commands and errors against a real small
qcow2 (qemu-img), and the live path against a fake QMP server on a unix socket."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.drivers.base import InstanceDefinition, NotFound
from node_agent.drivers.qemu import QemuDriver, qmp
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu import snapshots as snaps
from tests.unit.test_qemu_driver_fake import FakeVm
from tests.unit.test_qemu_qmp import FakeQmp

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="needs qemu-img (qemu-utils)")


def _qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def vm_dir(tmp_path: Path) -> Path:
    """A stopped VM's directory: a 16 MiB qcow2 overlay on a qcow2 base, as define makes."""
    directory = tmp_path / "vm1"
    directory.mkdir()
    if shutil.which("qemu-img"):
        _qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "16M")
        _qemu_img("create", "-q", "-f", "qcow2", "-b", str(tmp_path / "base.qcow2"),
                  "-F", "qcow2", str(directory / cl.DISK))
    return directory


def _write(disk: Path, data: bytes) -> None:
    """Write ``data`` at offset 0 of the disk's guest view (qemu-io, as a guest would)."""
    pattern = data[0]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} 0 64k", str(disk)],
                   capture_output=True, check=True)


def _read_pattern(disk: Path, pattern: int) -> bool:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} 0 64k",
                           str(disk)], capture_output=True, text=True, check=True)
    return "Pattern verification failed" not in done.stdout


# -- the names file ---------------------------------------------------------------------------

def test_no_names_file_means_no_snapshots(tmp_path: Path) -> None:
    assert snaps.read_names(tmp_path) == {}


def test_names_are_written_atomically_and_read_back(tmp_path: Path) -> None:
    snaps.write_names(tmp_path, {"s1": "corral-aa", "s2": "corral-bb"})
    assert snaps.read_names(tmp_path) == {"s1": "corral-aa", "s2": "corral-bb"}
    assert json.loads((tmp_path / snaps.NAMES).read_text())["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [snaps.NAMES]  # no temporaries


@pytest.mark.parametrize("content", ["{", "[]", '{"snapshots": {"a": 1}}'])
def test_a_damaged_names_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / snaps.NAMES).write_text(content)
    with pytest.raises(snaps.SnapshotError, match=snaps.NAMES):
        snaps.read_names(tmp_path)


def test_rename_only_edits_the_names_file(tmp_path: Path) -> None:
    snaps.write_names(tmp_path, {"s1": "corral-aa", "s2": "corral-bb"})
    snaps.rename(tmp_path, "s1", "s3")
    assert snaps.read_names(tmp_path) == {"s3": "corral-aa", "s2": "corral-bb"}
    with pytest.raises(snaps.SnapshotExists):
        snaps.rename(tmp_path, "s3", "s2")
    with pytest.raises(snaps.SnapshotNotFound):
        snaps.rename(tmp_path, "nope", "s4")
    assert snaps.read_names(tmp_path) == {"s3": "corral-aa", "s2": "corral-bb"}


@pytest.mark.parametrize("name", ["", "a/b", ".", "..", "x" * 256, "a\0b"])
def test_invalid_snapshot_names_are_refused(name: str) -> None:
    with pytest.raises(snaps.SnapshotError, match="invalid snapshot name"):
        snaps.check_name(name)


def test_tags_are_unique_and_never_look_like_ids() -> None:
    tags = {snaps.new_tag() for _ in range(100)}
    assert len(tags) == 100 and all(t.startswith(snaps.TAG_PREFIX) for t in tags)


# -- qemu-img commands -----------------------------------------------------------------------

def test_qemu_img_commands() -> None:
    disk = Path("/vm/root.qcow2")
    assert snaps.qemu_img_argv("create", disk, "corral-1a") == [
        "qemu-img", "snapshot", "-q", "--image-opts", "-c", "corral-1a",
        "driver=qcow2,file.filename=/vm/root.qcow2"]
    assert snaps.qemu_img_argv("apply", disk, "corral-1a")[4] == "-a"
    assert snaps.qemu_img_argv("delete", disk, "corral-1a")[4] == "-d"
    assert snaps.image_opts(Path("/a,b/x")) == "driver=qcow2,file.filename=/a,,b/x"
    with pytest.raises(snaps.SnapshotError):
        snaps.qemu_img_argv("apply", disk, "1")  # qemu-img would take it for an id
    with pytest.raises(ValueError):
        snaps.qemu_img_argv("rename", disk, "corral-1a")


@needs_qemu_img
def test_stopped_vm_create_apply_delete_with_real_qemu_img(vm_dir: Path) -> None:
    disk = vm_dir / cl.DISK
    _write(disk, b"\x01")
    snaps.create(vm_dir, "s1", live=None)
    tag = snaps.read_names(vm_dir)["s1"]
    assert tag in _qemu_img("snapshot", "-l", str(disk))
    assert snaps.disk_tags(disk) == [tag]
    _write(disk, b"\x02")
    assert _read_pattern(disk, 2)
    snaps.apply(vm_dir, "s1")
    assert _read_pattern(disk, 1)
    snaps.create(vm_dir, "s2", live=None)
    snaps.delete(vm_dir, "s1", live=None)
    assert snaps.read_names(vm_dir).keys() == {"s2"}
    assert tag not in _qemu_img("snapshot", "-l", str(disk))
    assert snaps.disk_tags(disk) == [snaps.read_names(vm_dir)["s2"]]


@needs_qemu_img
def test_a_repeated_name_is_refused_and_adds_nothing(vm_dir: Path) -> None:
    snaps.create(vm_dir, "s1", live=None)
    with pytest.raises(snaps.SnapshotExists, match="already exists"):
        snaps.create(vm_dir, "s1", live=None)
    assert len(snaps.disk_tags(vm_dir / cl.DISK)) == 1


@needs_qemu_img
def test_unknown_snapshots_are_not_found_and_change_nothing(vm_dir: Path) -> None:
    snaps.create(vm_dir, "s1", live=None)
    before = (snaps.read_names(vm_dir), snaps.disk_tags(vm_dir / cl.DISK))
    for call in (lambda: snaps.apply(vm_dir, "nope"),
                 lambda: snaps.delete(vm_dir, "nope", live=None)):
        with pytest.raises(NotFound, match="snapshot 'nope' of VM 'vm1' not found"):
            call()
    assert (snaps.read_names(vm_dir), snaps.disk_tags(vm_dir / cl.DISK)) == before


@needs_qemu_img
def test_a_delete_retried_after_the_disk_changed_only_edits_the_names(vm_dir: Path) -> None:
    snaps.create(vm_dir, "s1", live=None)
    _qemu_img("snapshot", "-d", snaps.read_names(vm_dir)["s1"], str(vm_dir / cl.DISK))
    snaps.delete(vm_dir, "s1", live=None)  # as if the agent crashed before the file write
    assert snaps.read_names(vm_dir) == {}


@needs_qemu_img
def test_qemu_img_failures_carry_its_message(vm_dir: Path) -> None:
    (vm_dir / cl.DISK).write_bytes(b"not a qcow2")
    with pytest.raises(snaps.SnapshotError, match=r"'s1' of VM 'vm1': .*not in qcow2 format"):
        snaps.create(vm_dir, "s1", live=None)
    assert snaps.read_names(vm_dir) == {}


@needs_qemu_img
def test_a_names_entry_without_its_internal_snapshot_cannot_be_restored(
        vm_dir: Path) -> None:
    snaps.write_names(vm_dir, {"s1": "corral-0123"})
    with pytest.raises(snaps.SnapshotError, match="no internal snapshot 'corral-0123'"):
        snaps.apply(vm_dir, "s1")


# -- a running VM: QMP (a fake QEMU on the socket) -----------------------------------------

class FakeQemuDisk:
    """Answers the block QMP commands for one drive, keeping its internal snapshots."""

    def __init__(self, path: Path) -> None:
        self.tags: list[str] = []
        self.server = FakeQmp(path, self.handle)

    def handle(self, request: dict[str, Any]) -> list[dict[str, object]]:
        command, args = request["execute"], request.get("arguments", {})
        if command == "query-block":
            snapshots = [{"name": t, "id": str(i)} for i, t in enumerate(self.tags, 1)]
            return [{"return": [{"device": "root",
                                 "inserted": {"image": {"snapshots": snapshots}}}]}]
        if args.get("device") != "root":
            return [{"error": {"class": "GenericError", "desc": "Cannot find device"}}]
        if command == "blockdev-snapshot-internal-sync":
            self.tags.append(args["name"])
        elif command == "blockdev-snapshot-delete-internal-sync":
            if args["name"] not in self.tags:
                return [{"error": {"class": "GenericError", "desc": "does not exist"}}]
            self.tags.remove(args["name"])
        return [{"return": {}}]


@pytest.fixture
def live_vm(tmp_path: Path) -> Iterator[tuple[Path, FakeQemuDisk]]:
    directory = tmp_path / "vm2"
    directory.mkdir()
    fake = FakeQemuDisk(directory / cl.QMP)
    yield directory, fake
    fake.server.close()


def _live(directory: Path) -> snaps.Qmp:
    return lambda command, args: qmp.execute(directory / cl.QMP, command, args, timeout=5)


def test_a_running_vm_is_snapshotted_through_qmp_on_its_drive(
        live_vm: tuple[Path, FakeQemuDisk]) -> None:
    directory, fake = live_vm  # no agent socket: the snapshot is crash-consistent
    snaps.create(directory, "s1", _live(directory))
    assert fake.tags == [snaps.read_names(directory)["s1"]]
    snaps.delete(directory, "s1", _live(directory))
    assert fake.tags == [] and snaps.read_names(directory) == {}
    sent = [r["execute"] for r in fake.server.seen if r["execute"] != "qmp_capabilities"]
    assert sent == ["blockdev-snapshot-internal-sync", "query-block",
                    "blockdev-snapshot-delete-internal-sync"]


def test_a_qmp_refusal_is_a_snapshot_error_and_names_nothing(
        live_vm: tuple[Path, FakeQemuDisk]) -> None:
    directory, fake = live_vm

    def refuse(command: str, args: dict[str, Any]) -> Any:
        raise qmp.QmpError(command, "GenericError", "Device 'root' is read-only")

    with pytest.raises(snaps.SnapshotError, match="snapshot 's1' of VM 'vm2': .*read-only"):
        snaps.create(directory, "s1", refuse)
    assert snaps.read_names(directory) == {}


def test_guest_sync_gives_up_quickly_without_an_agent(tmp_path: Path) -> None:
    assert snaps.guest_sync(tmp_path, hello=0.2, wait=1) is False


def test_restoring_an_unknown_snapshot_leaves_a_running_vm_alone(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path / "vms", accel="tcg")
    directory = driver.vmpath / "vm1"
    directory.mkdir(parents=True)
    spec = cl.build_spec(InstanceDefinition("vm1", Path("/img")), directory, 1 << 33,
                         {"kernel": "/k", "initrd": "/i", "rootfs": "/r"})
    (directory / cl.CONFIG).write_text(json.dumps(spec.to_json()))
    vm = FakeVm(directory)
    try:
        vm.start()
        with pytest.raises(NotFound, match="'nope'"):
            driver.restore_snapshot("vm1", "nope")
        with pytest.raises(NotFound):
            driver.delete_snapshot("vm1", "nope")
        assert driver.status("vm1") == "Running" and vm.commands() == []
        assert driver.list_snapshots("vm1") == []
    finally:
        vm.close()
