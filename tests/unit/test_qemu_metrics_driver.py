"""QemuDriver.metric_samples with fakes at its process boundaries: a stand-in QEMU process
with a fake QMP server (test_qemu_driver_fake) and a fake guest agent on the VM's agent
socket (test_qemu_agent). Which view it reports, and when it gives up on the guest."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral_shared.instance_metrics import FAMILIES, Sample
from node_agent.drivers.base import InstanceDefinition, NotFound
from node_agent.drivers.qemu import QemuDriver, guest_metrics
from node_agent.drivers.qemu import cmdline as cl
from tests.unit.test_qemu_agent import FakeGuest
from tests.unit.test_qemu_driver_fake import IMAGE, FakeVm
from tests.unit.test_qemu_guest_metrics import CAPTURED

MiB = 1024**2


class MetricsVm(FakeVm):
    """A fake QEMU that also answers the QMP queries of the host's view."""

    def handle(self, request: dict[str, object]) -> list[dict[str, object]]:
        assert self.process is not None
        answers: dict[str, object] = {
            "query-cpus-fast": [{"cpu-index": 0, "thread-id": self.process.pid}],
            "query-memory-size-summary": {"base-memory": 256 * MiB - 8192},
            "query-blockstats": [{"device": "root", "stats": {
                "rd_bytes": 4096, "rd_operations": 2, "wr_bytes": 0, "wr_operations": 0}}],
        }
        if request["execute"] in answers:
            return [{"return": answers[str(request["execute"])]}]
        return super().handle(request)


class Agent:
    """The guest side: answers HELLO, and EXEC with ``exit_code`` and ``stdout``."""

    def __init__(self, exit_code: int = 0, stdout: str = CAPTURED) -> None:
        self.exit_code, self.stdout = exit_code, stdout.encode()
        self.execs: list[list[str]] = []

    def __call__(self, fields: list[bytes]) -> list[bytes]:
        if fields[0] == b"HELLO":
            return [b"OK " + fields[1] + b" corral-agent 1"]
        if fields[0] == b"EXEC":
            self.execs.append([base64.b64decode(f).decode() for f in fields[3:]])
            return [b"RESULT " + fields[1] + b" " + str(self.exit_code).encode() + b" ." +
                    base64.b64encode(self.stdout) + b" ."]
        return []


@pytest.fixture
def driver(tmp_path: Path) -> QemuDriver:
    return QemuDriver(tmp_path / "vms", accel="tcg")


@pytest.fixture
def vm(driver: QemuDriver) -> Iterator[MetricsVm]:
    directory = driver.vmpath / "vm1"
    directory.mkdir(parents=True)
    spec = cl.build_spec(InstanceDefinition("vm1", Path("/img"), {"limits.cpu": "2"}),
                         directory, 1 << 33, IMAGE)
    (directory / cl.CONFIG).write_text(json.dumps(spec.to_json()))
    fake = MetricsVm(directory)
    yield fake
    fake.close()


@pytest.fixture
def guest(vm: MetricsVm) -> Iterator[list[FakeGuest]]:
    made: list[FakeGuest] = []
    yield made
    for fake in made:
        fake.server.close()


def families(samples: list[Sample]) -> set[str]:
    assert all(s.family in FAMILIES for s in samples)
    return {s.family for s in samples}


def value(samples: list[Sample], family: str) -> float:
    (found,) = [s.value for s in samples if s.family == family]
    return found


def test_a_running_vm_reports_its_guests_figures(driver: QemuDriver, vm: MetricsVm,
                                                 guest: list[FakeGuest]) -> None:
    vm.start()
    agent = Agent()
    guest.append(FakeGuest(vm.directory, agent))
    samples = driver.metric_samples("vm1")
    assert agent.execs == [guest_metrics.ARGV]
    assert value(samples, "lxd_cpu_effective_total") == 2
    assert samples[1:] == guest_metrics.guest_samples(CAPTURED)
    assert vm.commands() == []  # the host's view is not read


def test_without_an_agent_the_host_view_is_reported(driver: QemuDriver,
                                                    vm: MetricsVm) -> None:
    vm.start()
    started = time.monotonic()
    samples = driver.metric_samples("vm1")
    assert time.monotonic() - started < 2  # no socket to connect to: no wait
    assert families(samples) == {
        "lxd_cpu_effective_total", "lxd_cpu_seconds", "lxd_memory_MemTotal_bytes",
        "lxd_memory_MemFree_bytes", "lxd_memory_MemAvailable_bytes",
        "lxd_disk_read_bytes", "lxd_disk_reads_completed", "lxd_disk_written_bytes",
        "lxd_disk_writes_completed"}
    assert value(samples, "lxd_memory_MemTotal_bytes") == 256 * MiB - 8192
    assert {(s.labels["cpu"], s.labels["mode"]) for s in samples
            if s.family == "lxd_cpu_seconds"} == {("0", "user"), ("0", "system")}


def test_a_failed_script_or_a_frozen_vm_gets_the_host_view(driver: QemuDriver,
                                                           vm: MetricsVm,
                                                           guest: list[FakeGuest]) -> None:
    vm.start()
    agent = Agent(exit_code=137, stdout="@@ meminfo\nMemTotal: 1 kB\n")
    guest.append(FakeGuest(vm.directory, agent))
    samples = driver.metric_samples("vm1")
    assert len(agent.execs) == 1 and "lxd_procs_total" not in families(samples)
    assert value(samples, "lxd_memory_MemTotal_bytes") == 256 * MiB - 8192
    vm.run_state = "paused"
    samples = driver.metric_samples("vm1")
    assert len(agent.execs) == 1  # not asked: a frozen guest cannot answer
    assert value(samples, "lxd_cpu_effective_total") == 2
    assert "lxd_disk_read_bytes" in families(samples)


def test_a_stopped_vm_has_none_and_an_unknown_one_is_not_found(driver: QemuDriver,
                                                               vm: MetricsVm) -> None:
    assert driver.metric_samples("vm1") == []
    with pytest.raises(NotFound):
        driver.metric_samples("nope")
