"""Live migration's pure parts (the target's address as JSON, the incoming argv, stats) and
the source's QMP sequence against a scripted fake QEMU (a fake QMP server on the socket)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.drivers.base import InstanceDefinition, InvalidState
from node_agent.drivers.qemu import QemuDriver
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu import migration as mig
from tests.unit.test_qemu_driver_fake import IMAGE, FakeVm

# query-migrate on the source after a 256 MiB busybox guest moved (QEMU 7.2, TCG, loopback).
COMPLETED = json.loads("""
{"status": "completed", "setup-time": 2, "downtime": 87, "total-time": 249,
 "ram": {"total": 268967936, "postcopy-requests": 0, "dirty-sync-count": 3,
  "multifd-bytes": 0, "pages-per-second": 205905, "downtime-bytes": 16536531,
  "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 3157.75248582996,
  "transferred": 97324792, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 80788261,
  "duplicate": 42221, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 96755712,
  "normal": 23622}}
""")
INCOMING = mig.Incoming("127.0.0.1", 40001, 40002, "root")


def test_the_target_address_survives_json() -> None:
    doc = json.loads(json.dumps(INCOMING.to_json()))
    assert doc == {"host": "127.0.0.1", "migration_port": 40001, "nbd_port": 40002,
                   "export": "root"}
    assert mig.Incoming.from_json(doc) == INCOMING
    assert INCOMING.migration_uri == "tcp:127.0.0.1:40001"
    assert mig.Incoming("::1", 1, 2, "root").migration_uri == "tcp:[::1]:1"


@pytest.mark.parametrize("doc", [
    {}, {"host": "h", "migration_port": 1, "nbd_port": 2},
    {"host": "h", "migration_port": "1", "nbd_port": 2, "export": "root"},
    {"host": "h", "migration_port": 1, "nbd_port": 70000, "export": "root"},
    {"host": "h", "migration_port": True, "nbd_port": 2, "export": "root"},
    {"host": "", "migration_port": 1, "nbd_port": 2, "export": "root"},
    {"host": "h,x=y", "migration_port": 1, "nbd_port": 2, "export": "root"}])
def test_a_malformed_target_address_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(mig.MigrationError, match="invalid migration target"):
        mig.Incoming.from_json(doc)


def test_an_incoming_vm_starts_paused_and_waits_for_migrate_incoming() -> None:
    definition = InstanceDefinition("vm1", Path("/img"))
    spec = cl.build_spec(definition, Path("/var/lib/vms/vm1"), 8 << 30, IMAGE)
    argv = cl.qemu_argv("qemu", spec, "tcg", incoming=True)
    assert argv[-3:] == ["-S", "-incoming", "defer"]
    assert argv[:-3] == cl.qemu_argv("qemu", spec, "tcg")
    assert "-incoming" not in cl.qemu_argv("qemu", spec, "tcg")


def test_stats_come_from_the_completed_query_migrate_reply() -> None:
    stats = mig.parse_stats(COMPLETED, total_ms=448, disk_bytes=1441792)
    assert stats == mig.MigrationStats(total_ms=448, migration_ms=249, downtime_ms=87,
                                       ram_bytes=97324792, ram_total=268967936,
                                       disk_bytes=1441792)
    assert mig.parse_stats({"status": "completed"}, 1, 0).ram_bytes == 0


class SourceVm(FakeVm):
    """A running QEMU that mirrors and migrates as QEMU 7.2 does, one poll per step."""

    def __init__(self, directory: Path, fail: str = "") -> None:
        super().__init__(directory)
        self.fail = fail  # a command to refuse
        self.job: dict[str, Any] | None = None
        self.migration = "none"

    def handle(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        command, args = request["execute"], request.get("arguments", {})
        if command == self.fail:
            return [{"error": {"class": "GenericError", "desc": f"{command} broke"}}]
        if command == "blockdev-mirror":
            self.job = {"id": args["job-id"], "type": "mirror", "status": "running",
                        "current-progress": 0, "total-progress": 4096}
        elif command == "query-jobs":
            return [{"return": [self._advance_job()] if self.job else []}]
        elif command == "block-job-cancel" and self.job:
            self.job["status"] = "concluded"
        elif command == "job-dismiss":
            self.job = None
        elif command == "migrate":
            self.migration = "active"
        elif command == "query-migrate":
            return [{"return": self._advance_migration()}]
        elif command == "migrate-continue":
            self.migration = "continuing"  # QEMU's thread moves on a moment later
        elif command == "migrate_cancel":
            self.migration = "cancelled"
        return super().handle(request)

    def _advance_job(self) -> dict[str, Any]:
        assert self.job is not None
        if self.job["status"] == "running":
            self.job.update({"status": "ready", "current-progress": 4096})
        return dict(self.job)

    def _advance_migration(self) -> dict[str, Any]:
        if self.migration == "active":
            self.migration = "pre-switchover"
            self.run_state = "finish-migrate"
        elif self.migration == "continuing":
            self.migration = "device"
            return {"status": "pre-switchover"}
        elif self.migration == "device":
            self.migration, self.run_state = "completed", "postmigrate"
            return COMPLETED
        return {"status": self.migration} if self.migration != "none" else {}


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[QemuDriver, SourceVm]]:
    driver = QemuDriver(tmp_path / "vms", accel="tcg")
    directory = driver.vmpath / "vm1"
    directory.mkdir(parents=True)
    spec = cl.build_spec(InstanceDefinition("vm1", Path("/img")), directory, 1 << 33, IMAGE)
    (directory / cl.CONFIG).write_text(json.dumps(spec.to_json()))
    fake = SourceVm(directory)
    yield driver, fake
    fake.close()


def test_the_mirror_completes_while_the_guest_is_stopped_before_the_switch_over(
        source: tuple[QemuDriver, SourceVm]) -> None:
    driver, vm = source
    vm.start()
    reports: list[dict[str, Any]] = []
    stats = mig.migrate_out(driver, "vm1", INCOMING, downtime_ms=250, progress=reports.append)
    assert stats.downtime_ms == 87 and stats.disk_bytes == 4096
    assert [c for c in vm.commands() if c not in ("query-jobs", "query-migrate")] == [
        "blockdev-add", "blockdev-mirror", "migrate-set-capabilities",
        "migrate-set-parameters", "migrate", "block-job-cancel", "job-dismiss",
        "blockdev-del", "migrate-continue"]
    sent = {r["execute"]: r.get("arguments") for r in vm.qmp.seen}  # type: ignore[union-attr]
    assert sent["blockdev-mirror"]["sync"] == "top"
    assert sent["migrate-set-parameters"]["downtime-limit"] == 250
    assert sent["migrate"] == {"uri": "tcp:127.0.0.1:40001"}
    assert sent["blockdev-add"]["server"] == {"type": "inet", "host": "127.0.0.1",
                                              "port": "40002"}
    assert {r["phase"] for r in reports} == {"disk", "memory"}
    assert driver.status("vm1") == "Frozen"  # postmigrate: the caller decides


@pytest.mark.parametrize("fail", ["blockdev-mirror", "migrate"])
def test_a_failed_step_resumes_the_source_and_says_what_failed(
        source: tuple[QemuDriver, SourceVm], fail: str) -> None:
    driver, vm = source
    vm.fail = fail
    vm.start()
    with pytest.raises(mig.MigrationError, match=f"{fail} broke"):
        mig.migrate_out(driver, "vm1", INCOMING)
    assert "blockdev-del" in vm.commands()  # the NBD connection is dropped
    assert vm.job is None and driver.status("vm1") == "Running"


def test_only_a_running_vm_migrates_and_only_a_migrated_source_is_dropped(
        source: tuple[QemuDriver, SourceVm]) -> None:
    driver, vm = source
    vm.start()
    vm.run_state = "paused"
    with pytest.raises(InvalidState, match="Frozen"):
        mig.migrate_out(driver, "vm1", INCOMING)
    with pytest.raises(InvalidState, match="not started"):
        mig.finish_source(driver, "vm1")
    assert vm.process is not None and vm.process.poll() is None
