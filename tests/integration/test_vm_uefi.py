"""VMs from LXD-format images that carry no kernel: built as ``busybox-vm-uefi`` (a GPT disk
whose EFI system partition holds a unified kernel image), booted through OVMF under TCG.

OVMF adds its own start-up (several seconds under TCG) to the kernel's: the timings are
printed (``-s`` shows them) and the timeouts are generous.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devtools.harness import DaemonProcess
from node_agent.drivers.qemu import cmdline as cl
from node_agent.images.busybox_vm import build_busybox_vm_image
from node_agent.images.vm_guest import READY_MARKER
from tests.integration.api import Api
from tests.integration.test_vm_instances import _exec, _qemu_processes

pytestmark = pytest.mark.real
BOOT_TIMEOUT = 240.0  # OVMF under TCG, on a CI host that may be busy


@pytest.fixture(scope="module")
def uefi_tarball() -> Iterator[Path]:
    for tool in ("qemu-img", "sfdisk", "mkfs.vfat", "mcopy", "objcopy"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    with tempfile.TemporaryDirectory(prefix="corral-uefi-build-") as tmp:
        started = time.monotonic()
        path = build_busybox_vm_image(Path(tmp), uefi=True)
        print(f"\nUEFI image build: {time.monotonic() - started:.1f} s, "
              f"{path.stat().st_size / 2**20:.1f} MiB")
        yield path


def test_the_uefi_image_is_an_lxd_vm_image_with_a_gpt_esp_disk(uefi_tarball: Path,
                                                              tmp_path: Path) -> None:
    with tarfile.open(uefi_tarball) as tf:
        assert sorted(tf.getnames()) == ["metadata.yaml", "rootfs.img"]  # no kernel files
        for name in ("metadata.yaml", "rootfs.img"):
            source = tf.extractfile(name)
            assert source is not None
            (tmp_path / name).write_bytes(source.read())
    meta = yaml.safe_load((tmp_path / "metadata.yaml").read_text())
    assert meta["properties"]["type"] == "virtual-machine" and "kernel" not in meta["corral"]
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(tmp_path / "rootfs.img"), str(raw)],
                   check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    esp, root = table["partitions"]
    assert esp["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC3B8"
    listing = subprocess.run(["mdir", "-i", f"{raw}@@{esp['start'] * 512}", "::/EFI/BOOT"],
                             capture_output=True, text=True, check=True).stdout
    assert "BOOTX64" in listing
    efi = tmp_path / "BOOTX64.EFI"
    subprocess.run(["mcopy", "-i", f"{raw}@@{esp['start'] * 512}", "::/EFI/BOOT/BOOTX64.EFI",
                    str(efi)], check=True)
    sections = subprocess.run(["objdump", "-h", str(efi)], capture_output=True, text=True,
                              check=True).stdout
    for section in (".osrel", ".cmdline", ".linux", ".initrd"):
        assert f" {section} " in sections
    assert root["start"] >= esp["start"] + esp["size"]  # the guest mounts it: see below


def test_a_uefi_vm_boots_to_userspace_and_stops_cleanly(fresh_daemon: DaemonProcess) -> None:
    daemon, api = fresh_daemon, Api(str(fresh_daemon.socket))
    daemon.corral("image", "build", "busybox", "--uefi", timeout=300)  # busybox-vm-uefi
    started = time.monotonic()
    daemon.corral("launch", "busybox-vm-uefi", "u1", "--vm", "-c", "limits.memory=256MiB",
                  timeout=120)
    volume = daemon.root / "storage-pools" / "default" / "virtual-machines" / "u1"
    config = json.loads((daemon.root / "vms" / "u1" / cl.CONFIG).read_text())
    assert config["firmware"] == cl.UEFI_BOOT and config["kernel"] == ""
    assert (volume / cl.VARS).stat().st_size == cl.OVMF_VARS.stat().st_size
    (process,) = _qemu_processes(daemon)
    assert "if=pflash" in process and "-kernel" not in process

    boot = _wait_for_console(daemon, "u1", READY_MARKER, started, 1)
    print(f"\nOVMF boot to userspace under TCG: {boot:.1f} s")
    assert _exec(daemon, "u1", "uname", "-r").strip().endswith("cloud-amd64")
    assert "runtime" in _exec(daemon, "u1", "ls", "/sys/firmware/efi").split()  # via UEFI
    assert "panic=-1" in _exec(daemon, "u1", "cat", "/proc/cmdline")  # the UKI's .cmdline
    assert _exec(daemon, "u1", "cat", "/mnt/root/README") == "corral busybox VM root disk\n"

    daemon.corral("stop", "u1", timeout=180)  # the ACPI power button, as for any VM
    assert api.get("/1.0/instances/u1")["status"] == "Stopped"
    assert _qemu_processes(daemon) == []
    log = daemon.corral("console", "u1", "--show-log").stdout.decode(errors="replace")
    assert "Power down" in log  # the guest powered off: no forced quit

    started = time.monotonic()  # a second boot, with the VM's own VARS from the first
    daemon.corral("start", "u1", timeout=120)
    boot = _wait_for_console(daemon, "u1", READY_MARKER, started, 2)  # the log is appended
    print(f"second boot: {boot:.1f} s")
    assert _exec(daemon, "u1", "echo", "again").strip() == "again"
    daemon.corral("delete", "--force", "u1", timeout=120)
    assert _qemu_processes(daemon) == []
    assert not volume.exists() and not (daemon.root / "vms" / "u1").exists()


def _wait_for_console(daemon: DaemonProcess, name: str, marker: str, since: float,
                      count: int) -> float:
    """Seconds from ``since`` until ``marker`` is ``count`` times in the VM's console log."""
    deadline = since + BOOT_TIMEOUT
    while True:
        log = daemon.corral("console", name, "--show-log").stdout.decode(errors="replace")
        if log.count(marker) >= count:
            return time.monotonic() - since
        assert time.monotonic() < deadline, f"no {marker!r} in the console log:\n{log[-3000:]}"
        time.sleep(1)
