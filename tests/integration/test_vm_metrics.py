"""QemuDriver.metric_samples against a real busybox VM (TCG where KVM does not prove
itself): the guest's own figures through the agent, the host's view when the agent cannot
answer (the VM frozen, the agent busy), nothing for a stopped VM.

The fixtures are test_qemu_driver's: one scratch directory and one bridge, torn down
with every QEMU and tap under them even when a test fails. ``-s`` prints the raw guest
output (what tests/unit/test_qemu_guest_metrics.py keeps a capture of).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral_shared.instance_metrics import FAMILIES, Sample
from node_agent.drivers.base import NotFound
from node_agent.drivers.qemu import QemuDriver, guest_metrics
from node_agent.drivers.qemu.accel_choice import AcceleratorChoice
from node_agent.drivers.qemu.agent import LOCK
from tests.integration.test_qemu_driver import (  # noqa: F401 (fixtures)
    base,
    boot,
    bridge,
    choice,
    define,
    image,
    tarball,
)

pytestmark = pytest.mark.real
MiB = 1024**2


@pytest.fixture(scope="module")
def metrics_driver(base: Path, choice: AcceleratorChoice) -> QemuDriver:  # noqa: F811
    made = QemuDriver(base / "vms")
    made.choice = choice
    return made


@pytest.fixture(scope="module")
def running(metrics_driver: QemuDriver, image: Path,  # noqa: F811
            bridge: str) -> Iterator[str]:  # noqa: F811
    """One booted VM for the module (a TCG boot is slow), its agent answering."""
    name = define(metrics_driver, image, bridge)
    try:
        print(f"\nboot ({metrics_driver.accelerator()}): {boot(metrics_driver, name):.1f} s")
        yield name
    finally:
        if metrics_driver.status(name) != "Stopped":
            metrics_driver.stop(name, force=True, timeout=0)
        metrics_driver.delete(name)


def by_family(samples: list[Sample]) -> dict[str, list[Sample]]:
    assert all(sample.family in FAMILIES for sample in samples), samples
    found: dict[str, list[Sample]] = {}
    for sample in samples:
        found.setdefault(sample.family, []).append(sample)
    return found


def one(found: dict[str, list[Sample]], family: str, **labels: str) -> float:
    matches = [s.value for s in found.get(family, []) if labels.items() <= s.labels.items()]
    assert len(matches) == 1, (family, labels, found.get(family))
    return matches[0]


def test_a_running_vm_reports_what_its_guest_sees(metrics_driver: QemuDriver,
                                                  running: str) -> None:
    raw = metrics_driver.exec(running, guest_metrics.ARGV, timeout=30)
    print(f"\n--- guest output ---\n{raw.stdout.decode()}--- end ---")
    started = time.monotonic()
    found = by_family(metrics_driver.metric_samples(running))
    print(f"scrape: {(time.monotonic() - started) * 1000:.0f} ms")
    assert one(found, "lxd_cpu_effective_total") == 1
    total = one(found, "lxd_memory_MemTotal_bytes")
    assert 180 * MiB < total <= 256 * MiB
    assert 0 < one(found, "lxd_memory_MemFree_bytes") < total
    assert 0 < one(found, "lxd_memory_RSS_bytes") < total
    assert one(found, "lxd_memory_Swap_bytes") == 0  # the guest has no swap
    modes = {s.labels["mode"]: s.value for s in found["lxd_cpu_seconds"]}
    assert {s.labels["cpu"] for s in found["lxd_cpu_seconds"]} == {"0"}
    assert set(modes) == set(guest_metrics.CPU_MODES) and modes["idle"] + modes["system"] > 0
    assert one(found, "lxd_procs_total") >= 3  # init, the agent, its shell at least
    assert one(found, "lxd_disk_read_bytes", device="vda") > 0
    root = {"device": "/dev/vda", "fstype": "ext4", "mountpoint": "/mnt/root"}
    size = one(found, "lxd_filesystem_size_bytes", **root)
    assert 0 < one(found, "lxd_filesystem_avail_bytes", **root) <= size
    assert not any(s.labels["mountpoint"].startswith(("/proc", "/sys", "/dev"))
                   for s in found["lxd_filesystem_size_bytes"])
    assert one(found, "lxd_network_transmit_packets", device="eth0") > 0  # DHCP discovers
    assert any(s.labels == {"device": "lo"} for s in found["lxd_network_receive_bytes"])
    assert "lxd_memory_OOM_kills" in found


def test_without_the_agent_the_host_view_is_reported(metrics_driver: QemuDriver,
                                                     running: str) -> None:
    # the agent busy with another exec: not waited for
    with open(metrics_driver.vm_dir(running) / LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        busy = by_family(metrics_driver.metric_samples(running))
        waited = time.monotonic() - started
    print(f"\nscrape with the agent busy: {waited * 1000:.0f} ms")
    assert waited < 5
    metrics_driver.freeze(running)  # a frozen guest cannot answer: not asked
    try:
        started = time.monotonic()
        frozen = by_family(metrics_driver.metric_samples(running))
        assert time.monotonic() - started < 2
    finally:
        metrics_driver.unfreeze(running)
    for found in (busy, frozen):
        assert one(found, "lxd_cpu_effective_total") == 1
        assert "lxd_procs_total" not in found and "lxd_filesystem_size_bytes" not in found
        total = one(found, "lxd_memory_MemTotal_bytes")
        assert 250 * MiB < total <= 256 * MiB  # the RAM QEMU gave it
        assert one(found, "lxd_cpu_seconds", cpu="0", mode="user") + \
            one(found, "lxd_cpu_seconds", cpu="0", mode="system") > 0
        assert one(found, "lxd_disk_read_bytes", device="root") > 0
        assert one(found, "lxd_disk_reads_completed", device="root") > 0
        assert one(found, "lxd_network_transmit_packets", device="eth0") > 0
    deadline = time.monotonic() + 30  # and the agent answers again
    while "lxd_procs_total" not in by_family(metrics_driver.metric_samples(running)):
        assert time.monotonic() < deadline


def test_a_stopped_vm_has_no_metrics(metrics_driver: QemuDriver, image: Path,  # noqa: F811
                                     bridge: str) -> None:  # noqa: F811
    name = define(metrics_driver, image, bridge)
    try:
        assert metrics_driver.metric_samples(name) == []
        metrics_driver.start(name)
        assert metrics_driver.metric_samples(name)  # the host's view while it boots
        metrics_driver.stop(name, force=True, timeout=0)
        assert metrics_driver.metric_samples(name) == []
    finally:
        if metrics_driver.status(name) != "Stopped":
            metrics_driver.stop(name, force=True, timeout=0)
        metrics_driver.delete(name)
    with pytest.raises(NotFound):
        metrics_driver.metric_samples(name)
