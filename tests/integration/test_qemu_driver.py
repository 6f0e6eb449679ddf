"""The QEMU driver against real QEMU (under the accelerator the probe chooses: KVM where
it proves itself on the image's own kernel, else TCG) and the busybox VM image built from
Debian's cloud kernel.

Everything lives under one ``mkdtemp`` directory and one bridge (``qbr<hex>``) made here;
the teardown kills any QEMU left under that directory and removes taps, bridge and files,
even when a test fails. The kernel package is downloaded once into the shared cache
(/var/cache/corral, or ``$CORRAL_CACHE_DIR``). Timings are printed (``-s`` shows them).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from node_agent.drivers.base import InstanceDefinition, InvalidState
from node_agent.drivers.qemu import QemuDriver, accel, host
from node_agent.drivers.qemu.accel_choice import AcceleratorChoice
from node_agent.drivers.qemu.agent import AgentUnavailable, exec_in_vm, wait_for_agent
from node_agent.drivers.qemu.driver import guest_of_image
from node_agent.images import ImageStore
from node_agent.images.busybox_vm import build_busybox_vm_image
from node_agent.images.vm_guest import READY_MARKER
from node_agent.images.vm_unpack import unpack_vm_image

pytestmark = pytest.mark.real
MiB = 1024**2
BOOT_TIMEOUT = 60.0


@contextmanager
def qemu_scratch(prefix: str, configs: str) -> Iterator[Path]:
    """A scratch directory for VMs; afterwards their QEMUs are killed and the taps named
    in their specs (``configs``: a glob under it) removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("qemu-system-x86_64", "qemu-img", "ip", "mke2fs"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install qemu-system-x86 qemu-utils)")
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        for pid in qemu_pids(path):
            os.kill(pid, signal.SIGKILL)
        for config in path.glob(configs):
            for tap in re.findall(r'"tap": "([^"]+)"', config.read_text()):
                host.remove_tap(tap)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with qemu_scratch("corral-qemu-", "vms/*/config.json") as path:
        yield path


def qemu_pids(under: Path) -> list[int]:
    """Live (non-zombie) processes with ``under`` in their command line."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and host.is_alive(int(proc.name)):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(under).encode() in cmdline and b"qemu" in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def tarball(base: Path) -> Path:
    started = time.monotonic()
    path = build_busybox_vm_image(base / "build")
    print(f"\nimage build: {time.monotonic() - started:.1f} s")
    return path


@pytest.fixture(scope="module")
def image(tarball: Path, base: Path) -> Path:
    return unpack_vm_image(tarball, base / "image")


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    name = f"qbr{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", name], check=False)


@pytest.fixture(scope="module")
def choice(base: Path, image: Path) -> AcceleratorChoice:
    """One probe for the module, on the image's own kernel (or a pin from
    $CORRAL_VM_ACCELERATOR)."""
    found = AcceleratorChoice(base / "probe", find_guest=lambda: guest_of_image(image))
    print(f"\naccelerator: {found.current()}")
    return found


@pytest.fixture
def driver(base: Path, choice: AcceleratorChoice) -> QemuDriver:
    made = QemuDriver(base / "vms")
    made.choice = choice
    return made


def volume(driver: QemuDriver, name: str) -> Path:
    """Where these tests keep a VM's disk: a stand-in storage pool next to the VMs."""
    return driver.vmpath.parent / "pool" / "virtual-machines" / name


def define(driver: QemuDriver, image: Path, bridge: str, name: str | None = None) -> str:
    name = name or f"vm-{secrets.token_hex(3)}"
    driver.define(InstanceDefinition(
        name, image, {"limits.memory": "256MiB", "limits.cpu": "1"},
        {"eth0": {"type": "nic", "nictype": "bridged", "parent": bridge},
         "root": {"type": "disk", "path": "/", "pool": "default"}},
        volume(driver, name)))
    return name


def boot(driver: QemuDriver, name: str) -> float:
    """Start and wait for the agent; returns the seconds to the console's ready marker."""
    started = time.monotonic()
    driver.start(name)
    deadline = started + BOOT_TIMEOUT
    while READY_MARKER not in driver.log_path(name).read_text(errors="replace"):
        assert time.monotonic() < deadline, driver.log_path(name).read_text(errors="replace")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    wait_for_agent(driver.vm_dir(name), BOOT_TIMEOUT)
    return seconds


@pytest.fixture
def vm(driver: QemuDriver, image: Path, bridge: str) -> Iterator[str]:
    name = define(driver, image, bridge)
    try:
        print(f"\nboot to userspace ({driver.accelerator()}): {boot(driver, name):.1f} s")
        yield name
    finally:
        if driver.status(name) != "Stopped":
            driver.stop(name, force=True, timeout=0)
        driver.delete(name)


def nothing_left(driver: QemuDriver, name: str, taps: list[str]) -> None:
    assert not driver.vm_dir(name).exists() and not volume(driver, name).exists()
    assert not any(Path("/sys/class/net", tap).exists() for tap in taps)
    assert not qemu_pids(driver.vmpath / name)


def test_the_vm_image_is_an_lxd_vm_image_with_kernel_and_initrd(tarball: Path,
                                                                  base: Path) -> None:
    started = time.monotonic()
    again = build_busybox_vm_image(base / "again")  # the kernel comes from the cache now
    assert time.monotonic() - started < 15
    assert again.read_bytes() == tarball.read_bytes()
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
        meta = yaml.safe_load(tf.extractfile("metadata.yaml").read())  # type: ignore[union-attr]
    assert names == ["metadata.yaml", "rootfs.img", "kernel", "initrd"]
    assert meta["architecture"] == "x86_64" and meta["properties"]["os"] == "busybox"
    assert meta["corral"]["cmdline"].startswith("console=ttyS0")
    info = ImageStore(base / "store").import_file(tarball)
    assert info.type == "virtual-machine"


def test_the_kvm_probe_answers_in_bounded_time_and_leaves_no_process(
        base: Path, image: Path) -> None:
    workdir = base / "probe-once"
    guest = guest_of_image(image)
    assert guest is not None
    result = accel.probe_kvm(workdir=workdir, guest=guest)
    print(f"\naccelerator: {result}")
    assert result.name in ("kvm", "tcg") and result.reason and not result.unproven
    assert result.seconds < accel.PROBE_TIMEOUT + accel.GUEST_TIMEOUT + 5
    time.sleep(0.2)
    assert not qemu_pids(workdir) and list(workdir.iterdir()) == []


def test_the_guest_stage_passes_a_guest_that_works(base: Path, image: Path) -> None:
    """The second stage's checks (agent, paging work, run state) on the real guest, run
    under TCG here so that they pass on any machine: a working accelerator passes."""
    guest = guest_of_image(image)
    assert guest is not None
    scratch = base / "guest-stage"
    scratch.mkdir()
    argv = accel.guest_argv(accel.QEMU, guest, scratch)
    at = argv.index("-accel")
    argv[at + 1], argv[argv.index("-cpu") + 1] = "tcg", "max"
    started = time.monotonic()
    result = accel._run_guest(argv, scratch, accel.GUEST_TIMEOUT)
    print(f"\nguest stage under TCG: {time.monotonic() - started:.1f} s: {result}")
    assert result.name == "kvm", result  # "kvm": the stage's verdict on the accelerator
    assert not qemu_pids(scratch)


def test_the_probe_agrees_with_what_kvm_does_to_a_real_guest(
        base: Path, image: Path, bridge: str) -> None:
    """Where KVM is kvm-pvm (a boot sector runs, Linux guests fail: QEMU aborts setting
    an MSR, or the kernel never prints a line) the probe refuses it; where the probe
    accepts KVM, a VM pinned to KVM boots and runs a command."""
    result = accel.probe_kvm(workdir=base / "probe-agree", guest=guest_of_image(image))
    print(f"\nprobe on a real guest: {result}")
    if Path("/sys/module/kvm_pvm").exists():
        assert result.name == "tcg" and not result.unproven, result
    if result.name == "kvm":
        pinned = QemuDriver(base / "vms", accel="kvm")
        name = define(pinned, image, bridge)
        try:
            boot(pinned, name)
            assert pinned.running_under(name) == "kvm"
            assert exec_in_vm(pinned.vm_dir(name), ["echo", "ok"]).stdout == b"ok\n"
        finally:
            pinned.stop(name, force=True, timeout=0)
            pinned.delete(name)


def test_a_vm_boots_runs_commands_and_reports_state(driver: QemuDriver, vm: str,
                                                    bridge: str) -> None:
    started = time.monotonic()
    result = driver.exec(vm, ["uname", "-r"])
    print(f"exec round trip: {(time.monotonic() - started) * 1000:.0f} ms")
    assert result.exit_code == 0 and result.stdout.strip().endswith(b"-cloud-amd64")
    meminfo = driver.exec(vm, ["cat", "/proc/meminfo"]).stdout.decode()
    total = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo)[1]) * 1024  # type: ignore[index]
    assert 180 * MiB < total <= 256 * MiB
    failed = driver.exec(vm, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert failed == (3, b"out\n", b"err\n")
    disk = driver.exec(vm, ["cat", "/mnt/root/README"])
    assert disk.stdout == b"corral busybox VM root disk\n"
    state = driver.state(vm)
    assert state["status"] == "Running" and state["status_code"] == 103
    assert state["pid"] > 0 and state["cpu"]["usage"] > 0
    assert 64 * MiB < state["memory"]["usage"] < 1024 * MiB
    nic = state["network"]["eth0"]
    assert Path(f"/sys/class/net/{nic['host_name']}/master").resolve().name == bridge
    assert nic["hwaddr"] in driver.exec(vm, ["cat", "/sys/class/net/eth0/address"]).stdout.decode()
    assert nic["counters"]["packets_sent"] > 0  # the guest's DHCP discovers
    assert state["disk"]["root"]["usage"] > 0  # the overlay's blocks on the host
    assert sorted(p.name for p in volume(driver, vm).iterdir()) == ["root.qcow2"]
    assert not (driver.vm_dir(vm) / "root.qcow2").exists()  # sockets and logs only
    with pytest.raises(InvalidState):
        driver.start(vm)


def test_exec_argv_and_the_serial_console_reach_the_guest(driver: QemuDriver,
                                                          vm: str) -> None:
    argv = driver.exec_argv(vm, ["sh", "-c", "cat /etc/hostname; exit 7"], {}, "/", 0, 0)
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (7, b"busybox-vm\n")
    argv = driver.exec_argv(vm, ["sh", "-c", 'echo "$GREETING from $(pwd)"'],
                            {"GREETING": "hello there"}, "/mnt/root", 0, 0)
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, b"hello there from /mnt/root\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.settimeout(30)
        console.connect(str(driver.vm_dir(vm) / "console.sock"))
        console.sendall(b"\necho marker-$((6 * 7))\n")
        seen = b""
        while b"marker-42" not in seen:
            chunk = console.recv(4096)
            assert chunk, seen
            seen += chunk
    deadline = time.monotonic() + 5  # the log is written alongside, not before
    while "marker-42" not in driver.log_path(vm).read_text(errors="replace"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_freeze_pauses_the_guest_and_unfreeze_resumes_it(driver: QemuDriver, vm: str) -> None:
    driver.freeze(vm)
    assert driver.status(vm) == "Frozen"
    with pytest.raises(InvalidState):
        driver.freeze(vm)
    started = time.monotonic()
    with pytest.raises(AgentUnavailable, match="no answer"):
        exec_in_vm(driver.vm_dir(vm), ["true"], hello_timeout=1.0)
    assert time.monotonic() - started < 3
    driver.unfreeze(vm)
    assert driver.status(vm) == "Running"
    assert driver.exec(vm, ["echo", "back"]).stdout == b"back\n"


def test_a_new_driver_reattaches_and_stops_the_vm_with_acpi(driver: QemuDriver, vm: str,
                                                            base: Path) -> None:
    pid = driver.state(vm)["pid"]
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    assert int(fields[1]) != os.getpid() and int(fields[3]) != os.getsid(0)  # daemonised
    other = QemuDriver(base / "vms", accel="tcg")
    assert other.status(vm) == "Running" and other.state(vm)["pid"] == pid
    assert other.exec(vm, ["hostname"]).stdout == b"busybox-vm\n"
    tap = other.state(vm)["network"]["eth0"]["host_name"]
    started = time.monotonic()
    other.stop(vm, force=False, timeout=30)  # ACPI power button -> busybox poweroff
    print(f"\nACPI stop: {time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < 25
    assert "Power down" in other.log_path(vm).read_text(errors="replace")
    assert driver.status(vm) == "Stopped" and driver.state(vm)["pid"] == 0
    assert not host.is_alive(pid) and not Path("/sys/class/net", tap).exists()
    with pytest.raises(InvalidState):
        driver.stop(vm, force=True, timeout=0)


def test_restart_force_stop_and_delete_leave_nothing(driver: QemuDriver, image: Path,
                                                     bridge: str) -> None:
    name = define(driver, image, bridge)
    taps = []
    try:
        boot(driver, name)
        taps.append(driver.state(name)["network"]["eth0"]["host_name"])
        started = time.monotonic()
        driver.stop(name, force=True, timeout=0)
        print(f"\nforce stop: {time.monotonic() - started:.2f} s")
        assert driver.status(name) == "Stopped"
        boot(driver, name)  # the same disk overlay boots again
        assert driver.exec(name, ["true"]).exit_code == 0
        with pytest.raises(InvalidState):
            driver.delete(name)
        driver.stop(name, force=False, timeout=0)  # 0: no grace, as LXD
    finally:
        if driver.status(name) != "Stopped":
            driver.stop(name, force=True, timeout=0)
        driver.delete(name)
    nothing_left(driver, name, taps)
