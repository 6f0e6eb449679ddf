"""Live migration's pure parts (the target's address as JSON, the incoming argv, stats) and
the source's QMP sequence against a scripted fake QEMU (a fake QMP server on the socket)."""

from __future__ import annotations

import datetime
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from corral_shared import tls
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
CREDENTIALS = mig.Credentials(b"CA", b"CERT", b"KEY")


def test_the_target_address_survives_json() -> None:
    doc = json.loads(json.dumps(INCOMING.to_json()))
    assert doc == {"host": "127.0.0.1", "migration_port": 40001, "nbd_port": 40002,
                   "export": "root", "accel": ""}
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
        self.parameters: dict[str, Any] = {}
        self.passes = 1  # RAM passes before the switchover (dirty-sync-count)
        self.sync_count = 0
        self.loaded: dict[str, bytes] = {}  # the TLS files as object-add found them
        self.ram = (256 << 20) - 8192  # as cmdline gives a TCG VM of 256 MiB (tcg_ram.py)

    def handle(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        command, args = request["execute"], request.get("arguments", {})
        if command == self.fail:
            return [{"error": {"class": "GenericError", "desc": f"{command} broke"}}]
        if command == "object-add":
            self.loaded = {f.name: f.read_bytes() for f in Path(args["dir"]).iterdir()}
        elif command == "migrate-set-parameters":
            self.parameters.update(args)
        elif command == "query-migrate-parameters":
            return [{"return": self.parameters}]
        elif command == "blockdev-mirror":
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
        elif command == "query-version":
            return [{"return": {"qemu": {"major": 7, "minor": 2, "micro": 22}}}]
        elif command == "query-memory-size-summary":
            return [{"return": {"base-memory": self.ram}}]
        return super().handle(request)

    def _advance_job(self) -> dict[str, Any]:
        assert self.job is not None
        if self.job["status"] == "running":
            self.job.update({"status": "ready", "current-progress": 4096})
        return dict(self.job)

    def _advance_migration(self) -> dict[str, Any]:
        if self.migration == "active" and self.sync_count < self.passes:
            self.sync_count += 1
            return {"status": "active", "ram": {"dirty-sync-count": self.sync_count}}
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
    stats = mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS, downtime_ms=250,
                            progress=reports.append)
    assert stats.downtime_ms == 87 and stats.disk_bytes == 4096 and stats.tls
    assert [c for c in vm.commands() if c not in ("query-jobs", "query-migrate")] == [
        "object-del", "object-add", "blockdev-add", "blockdev-mirror",
        "migrate-set-capabilities", "migrate-set-parameters", "query-migrate-parameters",
        "migrate", "block-job-cancel", "job-dismiss", "blockdev-del", "migrate-continue"]
    sent: dict[Any, Any] = {r["execute"]: r.get("arguments")
                            for r in vm.qmp.seen}  # type: ignore[union-attr]
    assert sent["blockdev-mirror"]["sync"] == "top"
    assert sent["migrate-set-parameters"]["downtime-limit"] == 20  # converged in a pass
    assert sent["migrate-set-parameters"]["tls-creds"] == mig.TLS_CREDS
    assert sent["migrate-set-parameters"]["tls-hostname"] == mig.TLS_HOSTNAME
    assert sent["migrate"] == {"uri": "tcp:127.0.0.1:40001"}
    assert sent["blockdev-add"]["server"] == {"type": "inet", "host": "127.0.0.1",
                                              "port": "40002"}
    assert sent["blockdev-add"]["tls-creds"] == mig.TLS_CREDS
    assert sent["object-add"] == mig.tls_object(driver.vm_dir("vm1") / mig.TLS_DIR, "client")
    assert vm.loaded == {"ca-cert.pem": b"CA", "client-cert.pem": b"CERT",
                         "client-key.pem": b"KEY"}  # read by QEMU, then removed:
    assert not (driver.vm_dir("vm1") / mig.TLS_DIR).exists()
    assert {r["phase"] for r in reports} == {"disk", "memory"}
    assert driver.status("vm1") == "Frozen"  # postmigrate: the caller decides


def test_the_downtime_limit_rises_pass_by_pass_up_to_the_configured_one(
        source: tuple[QemuDriver, SourceVm]) -> None:
    driver, vm = source
    vm.passes = 8
    vm.start()
    mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS, downtime_ms=250)
    seen: list[Any] = vm.qmp.seen  # type: ignore[union-attr]
    limits = [r["arguments"]["downtime-limit"] for r in seen
              if r["execute"] == "migrate-set-parameters" and "downtime-limit" in r["arguments"]]
    assert limits == [20, 40, 80, 160, 250]


@pytest.mark.parametrize("fail", ["blockdev-mirror", "migrate"])
def test_a_failed_step_resumes_the_source_and_says_what_failed(
        source: tuple[QemuDriver, SourceVm], fail: str) -> None:
    driver, vm = source
    vm.fail = fail
    vm.start()
    with pytest.raises(mig.MigrationError, match=f"{fail} broke"):
        mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS)
    assert "blockdev-del" in vm.commands()  # the NBD connection is dropped
    assert vm.job is None and driver.status("vm1") == "Running"
    after = vm.commands()[vm.commands().index("blockdev-del"):]
    assert after[:3] == ["blockdev-del", "migrate-set-parameters", "object-del"]
    assert vm.parameters["tls-creds"] == ""


def test_only_a_running_vm_migrates_and_only_a_migrated_source_is_dropped(
        source: tuple[QemuDriver, SourceVm]) -> None:
    driver, vm = source
    vm.start()
    vm.run_state = "paused"
    with pytest.raises(InvalidState, match="Frozen"):
        mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS)
    with pytest.raises(InvalidState, match="not started"):
        mig.finish_source(driver, "vm1")
    assert vm.process is not None and vm.process.poll() is None


def test_a_migration_whose_daemon_died_is_marked_until_it_is_ended(
        source: tuple[QemuDriver, SourceVm]) -> None:
    """QEMU carries a migration on when the daemon following it dies: stopped at the
    switch-over, its NBD node, mirror job and TLS object still there. The mark that
    ``migrate_out`` leaves says so; ``resume_source`` ends it all and runs the guest."""
    driver, vm = source
    vm.start()
    mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS)
    assert mig.outgoing_left(driver, "vm1")  # completed, neither resumed nor dropped
    mig.resume_source(driver, "vm1")
    assert not mig.outgoing_left(driver, "vm1") and driver.status("vm1") == "Running"

    # What a daemon killed at the switch-over leaves (migrate_out never returned).
    (driver.vm_dir("vm1") / cl.OUTGOING_MARK).touch()
    vm.job = {"id": mig.MIRROR_JOB, "type": "mirror", "status": "ready"}
    vm.migration, vm.run_state = "pre-switchover", "finish-migrate"
    assert mig.outgoing_left(driver, "vm1") and driver.status("vm1") == "Frozen"
    mig.resume_source(driver, "vm1")
    assert driver.status("vm1") == "Running" and vm.job is None
    assert not mig.outgoing_left(driver, "vm1")
    assert {"migrate_cancel", "block-job-cancel", "blockdev-del", "object-del",
            "cont"} <= set(vm.commands())


def test_the_next_migration_first_ends_one_a_dead_daemon_left(
        source: tuple[QemuDriver, SourceVm]) -> None:
    """Even before the agent got to it: the stopped guest is not refused as Frozen, and
    the node names are free again before they are used."""
    driver, vm = source
    vm.start()
    (driver.vm_dir("vm1") / cl.OUTGOING_MARK).touch()
    vm.job = {"id": mig.MIRROR_JOB, "type": "mirror", "status": "ready"}
    vm.migration, vm.run_state = "pre-switchover", "finish-migrate"
    mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS)
    commands = vm.commands()
    assert commands.index("cont") < commands.index("blockdev-add")
    assert commands.index("blockdev-del") < commands.index("blockdev-add")
    assert driver.status("vm1") == "Frozen"  # postmigrate, the caller decides
    vm.exit()
    assert not mig.outgoing_left(driver, "vm1")  # no QEMU, nothing held


def test_the_credentials_directory_holds_what_tls_creds_x509_reads(tmp_path: Path) -> None:
    for endpoint in ("server", "client"):
        directory = mig.write_credentials(tmp_path, endpoint, CREDENTIALS)
        assert directory == tmp_path / mig.TLS_DIR
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        files = {f.name: f for f in directory.iterdir()}
        dh = {"dh-params.pem": mig.FFDHE2048_PEM} if endpoint == "server" else {}
        assert {n: f.read_bytes() for n, f in files.items()} == {
            "ca-cert.pem": b"CA", f"{endpoint}-cert.pem": b"CERT",
            f"{endpoint}-key.pem": b"KEY", **dh}  # a stale directory is replaced
        assert {stat.S_IMODE(f.stat().st_mode) for f in files.values()} == {0o600}
        assert mig.tls_object(directory, endpoint) == {
            "qom-type": "tls-creds-x509", "id": mig.TLS_CREDS, "dir": str(directory),
            "endpoint": endpoint, "verify-peer": True}
    with pytest.raises(mig.MigrationError):
        mig.write_credentials(tmp_path, "both", CREDENTIALS)
    assert "KEY" not in repr(CREDENTIALS)


def test_both_nbd_ends_require_tls_and_the_source_checks_the_fixed_name() -> None:
    assert mig.nbd_server_args("10.0.0.2", 10809) == {
        "addr": {"type": "inet", "data": {"host": "10.0.0.2", "port": "10809"}},
        "tls-creds": mig.TLS_CREDS}
    assert mig.nbd_client_args(INCOMING) == {
        "driver": "nbd", "node-name": mig.NBD_NODE, "export": "root",
        "server": {"type": "inet", "host": "127.0.0.1", "port": "40002"},
        "tls-creds": mig.TLS_CREDS, "tls-hostname": mig.TLS_HOSTNAME}


def test_a_leaf_of_the_cluster_certificate_is_signed_by_it_and_is_no_ca() -> None:
    ca_pem, ca_key = tls.generate("corral", ["localhost"])
    cert_pem, key_pem = tls.issue(ca_pem, ca_key, "corral migration", [mig.TLS_HOSTNAME])
    ca, cert = x509.load_pem_x509_certificate(ca_pem), x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [mig.TLS_HOSTNAME]
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - now <= datetime.timedelta(days=1)
    assert b"PRIVATE KEY" in key_pem
    other_pem, other_key = tls.generate("corral", [])
    with pytest.raises(tls.CertificateError, match="does not match"):
        tls.issue(ca_pem, other_key, "x", [])
    with pytest.raises(tls.CertificateError):
        tls.issue(b"junk", ca_key, "x", [])


def test_a_migration_across_accelerators_is_refused_before_anything_moves() -> None:
    kvm_target = mig.Incoming.from_json({**INCOMING.to_json(), "accel": "kvm"})
    with pytest.raises(mig.MigrationError, match="runs under TCG here .* under KVM"):
        kvm_target.check_accelerator("v1", "tcg")
    kvm_target.check_accelerator("v1", "kvm")
    INCOMING.check_accelerator("v1", "tcg")  # a target that did not say: QEMU decides
    with pytest.raises(mig.MigrationError):
        mig.Incoming.from_json({**INCOMING.to_json(), "accel": "xen"})


@pytest.mark.parametrize(("ram", "refused"), [(256 << 20, True), ((256 << 20) - 8192, False)])
def test_a_tcg_vm_whose_qemu_would_lose_guest_writes_is_not_migrated_live(
        source: tuple[QemuDriver, SourceVm], ram: int, refused: bool) -> None:
    """QEMU 7.2 under TCG, RAM a multiple of 256 KiB (a VM started before the trim):
    refused before anything moves, the guest runs on; a trimmed one migrates."""
    driver, vm = source
    (driver.vm_dir("vm1") / cl.ACCEL).write_text("tcg\n")
    vm.ram = ram
    vm.start()
    if not refused:
        mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS)
        assert "migrate" in vm.commands()
        return
    with pytest.raises(mig.MigrationError, match="would lose some of the guest's memory"):
        mig.migrate_out(driver, "vm1", INCOMING, CREDENTIALS)
    assert vm.commands() == ["query-version", "query-memory-size-summary"]
    assert driver.status("vm1") == "Running" and not mig.outgoing_left(driver, "vm1")
