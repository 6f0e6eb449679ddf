"""Live migration of a running VM between two QemuDrivers (two "hosts": separate VM paths on
this machine, loopback for NBD and the migration stream), real QEMU under TCG, the busybox
VM image. Both streams are TLS: the two hosts hold leaves of one generated CA pair (as
members hold leaves of the cluster certificate); leaves of another pair are refused.

Everything lives under one ``mkdtemp`` directory and one bridge made here; the teardown
kills any QEMU left under that directory and removes taps, bridge and files, even when a
test fails. Timings are printed (``-s`` shows them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral_shared import tls
from node_agent.drivers.base import InstanceDefinition, InvalidState
from node_agent.drivers.qemu import QemuDriver, host
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu import migration as mig
from node_agent.drivers.qemu.agent import wait_for_agent
from node_agent.images.busybox_vm import build_busybox_vm_image
from node_agent.images.vm_guest import READY_MARKER
from node_agent.images.vm_unpack import unpack_vm_image
from tests.integration.test_qemu_driver import BOOT_TIMEOUT, boot, qemu_pids, qemu_scratch

pytestmark = pytest.mark.real
COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done "
           "</dev/null >/dev/null 2>&1 &")


@pytest.fixture(scope="module")
def cluster_ca() -> tuple[bytes, bytes]:
    return tls.generate("corral", ["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def foreign_ca() -> tuple[bytes, bytes]:
    """Another cluster's. Its own name: GnuTLS picks an issuer by name among several."""
    return tls.generate("other", ["localhost", "127.0.0.1"])


def leaf(ca: tuple[bytes, bytes], also_trusts: bytes = b"",
         hosts: tuple[str, ...] = (mig.TLS_HOSTNAME,)) -> mig.Credentials:
    """A leaf of ``ca`` that trusts ``ca`` (QEMU checks its own leaf against it) and
    ``also_trusts``."""
    cert, key = tls.issue(*ca, "corral migration", list(hosts))
    return mig.Credentials(ca[0] + also_trusts, cert, key)


def no_credentials_left(driver: QemuDriver, name: str) -> bool:
    objects = driver._qmp(name, "qom-list", {"path": "/objects"})
    return (mig.TLS_CREDS not in {o["name"] for o in objects}
            and not (driver.vm_dir(name) / mig.TLS_DIR).exists())


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with qemu_scratch("corral-qemu-mig-", "*/*/config.json") as path:
        yield path


@pytest.fixture(scope="module")
def image(base: Path) -> Path:
    return unpack_vm_image(build_busybox_vm_image(base / "build"), base / "image")


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    name = f"qbr{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", name], check=False)


@pytest.fixture
def hosts(base: Path) -> Iterator[tuple[QemuDriver, QemuDriver]]:
    """Source and target drivers; whatever a test leaves is killed and removed."""
    tag = secrets.token_hex(2)
    pair = (QemuDriver(base / f"a{tag}", accel="tcg"), QemuDriver(base / f"b{tag}", accel="tcg"))
    try:
        yield pair
    finally:
        for driver in pair:
            for name in driver.names():
                mig.abort_incoming(driver, name)  # kill, taps, directory: any VM will do


def definition(image: Path, bridge: str) -> InstanceDefinition:
    return InstanceDefinition(
        f"vm-{secrets.token_hex(3)}", image, {"limits.memory": "256MiB", "limits.cpu": "1"},
        {"eth0": {"type": "nic", "nictype": "bridged", "parent": bridge},
         "root": {"type": "disk", "path": "/", "pool": "default"}})


def volume(driver: QemuDriver, name: str) -> Path:
    """The VM's disk directory on ``driver``'s host: each host has its own pool."""
    return driver.vmpath.with_name(f"{driver.vmpath.name}-pool") / "virtual-machines" / name


def on(driver: QemuDriver, vm: InstanceDefinition) -> InstanceDefinition:
    """``vm`` as ``driver``'s host defines it: its disk on that host's pool."""
    return dataclasses.replace(vm, volume=volume(driver, vm.name))


def sh(driver: QemuDriver, name: str, script: str) -> str:
    result = driver.exec(name, ["sh", "-c", script], timeout=30)
    assert result.exit_code == 0, result
    return result.stdout.decode().strip()


def taps(driver: QemuDriver, name: str) -> list[str]:
    config = json.loads((driver.vm_dir(name) / "config.json").read_text())
    return [nic["tap"] for nic in config["nics"]]


def test_a_running_vm_moves_with_its_ram_and_disk_and_never_reboots(
        hosts: tuple[QemuDriver, QemuDriver], image: Path, bridge: str,
        cluster_ca: tuple[bytes, bytes], base: Path) -> None:
    source, target = hosts
    vm = definition(image, bridge)
    name = vm.name
    source.define(on(source, vm))
    print(f"\nboot: {boot(source, name):.1f} s")
    sh(source, name, COUNTER)
    payload = secrets.token_hex(16)
    sh(source, name, f"echo {payload} > /mnt/root/moved && sync")
    boot_id = sh(source, name, "cat /proc/sys/kernel/random/boot_id")
    before = int(sh(source, name, "cat /tmp/counter"))
    source_pid, source_taps = source.state(name)["pid"], taps(source, name)

    incoming = mig.prepare_incoming(target, on(target, vm), "127.0.0.1", leaf(cluster_ca))
    incoming = mig.Incoming.from_json(json.loads(json.dumps(incoming.to_json())))
    assert target.status(name) == "Starting"  # inmigrate: paused, waiting
    assert not (target.vm_dir(name) / mig.TLS_DIR).exists()  # QEMU has read the key
    assert plain_nbd_is_refused(incoming)
    reports: list[dict[str, Any]] = []
    stats = mig.migrate_out(source, name, incoming, leaf(cluster_ca), downtime_ms=300,
                            progress=reports.append)
    print(f"migration: {stats}")
    assert stats.tls
    # The target may still be loading the last of it ("Starting"): finish_incoming waits.
    assert source.status(name) == "Frozen" and target.status(name) in ("Frozen", "Starting")
    assert {r["phase"] for r in reports} == {"disk", "memory"}
    assert stats.ram_bytes > 0 and stats.disk_bytes > 0 and 0 < stats.downtime_ms < 5000
    assert stats.total_ms >= stats.migration_ms > 0
    assert same_ram(source, target, name, base)

    mig.finish_incoming(target, name)
    assert target.status(name) == "Running"
    assert no_credentials_left(target, name)  # it may move on with new ones
    # The guest retranslates its code on the new QEMU (TCG): on a loaded host its agent's
    # first answer has taken over exec's 5 s. The counter and boot id below still prove
    # that this is the same guest, never rebooted.
    wait_for_agent(target.vm_dir(name), BOOT_TIMEOUT)
    after = int(sh(target, name, "cat /tmp/counter"))
    assert after > before
    time.sleep(1)
    assert int(sh(target, name, "cat /tmp/counter")) > after  # the loop still runs
    assert sh(target, name, "cat /proc/sys/kernel/random/boot_id") == boot_id
    assert sh(target, name, "cat /mnt/root/moved") == payload
    assert sh(target, name, "echo again > /mnt/root/after && sync && cat /mnt/root/after") \
        == "again"

    again = QemuDriver(target.vmpath, accel="tcg")  # a restarted daemon re-attaches
    state = again.state(name)
    assert again.status(name) == "Running" and state["pid"] == target.state(name)["pid"]
    assert state["network"]["eth0"]["host_name"] == taps(target, name)[0]

    mig.finish_source(source, name)
    assert not host.is_alive(source_pid) and source.status(name) == "Stopped"
    assert not any(host.link_exists(tap) for tap in source_taps)
    source.delete(name)
    assert not qemu_pids(source.vmpath) and not volume(source, name).exists()
    assert (volume(target, name) / "root.qcow2").is_file()  # the disk is on the target's pool
    assert not (target.vm_dir(name) / "root.qcow2").exists()

    target.stop(name, force=True, timeout=0)  # an ordinary VM of the target now
    target.delete(name)


def same_ram(source: QemuDriver, target: QemuDriver, name: str, scratch: Path) -> bool:
    """Whether the migrated guest's RAM on the target, loaded and still paused, equals the
    source's, paused after the migration: a write the migration lost shows here, before
    the guest runs on and trips over it (tcg_ram.py)."""
    deadline = time.monotonic() + 60
    while target._qmp(name, "query-status")["status"] == "inmigrate":
        assert time.monotonic() < deadline, "the target never loaded the migration"
        time.sleep(0.05)
    size = source._qmp(name, "query-memory-size-summary")["base-memory"]
    dumps = [scratch / f"{name}.{side}.ram" for side in ("source", "target")]
    try:
        for driver, dump in zip((source, target), dumps, strict=True):
            driver._qmp(name, "pmemsave", {"val": 0, "size": size, "filename": str(dump)}, 60)
        with dumps[0].open("rb") as ours, dumps[1].open("rb") as theirs:
            while chunk := ours.read(1 << 20):
                if chunk != theirs.read(1 << 20):
                    return False
        return True
    finally:
        for dump in dumps:
            dump.unlink(missing_ok=True)


def plain_nbd_is_refused(incoming: mig.Incoming) -> bool:
    """A client without TLS asking for the export (NBD fixed newstyle, NBD_OPT_GO) gets
    NBD_REP_ERR_TLS_REQD, not the disk."""
    with socket.create_connection((incoming.host, incoming.nbd_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.read(18)[:16] == b"NBDMAGICIHAVEOPT"  # then the handshake flags
        sock.sendall(struct.pack(">I", 1))  # NBD_FLAG_C_FIXED_NEWSTYLE
        name = incoming.export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        sock.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)  # NBD_OPT_GO
        magic, option, reply = struct.unpack(">QII", reader.read(16))
        return bool(option == 7 and reply == (1 << 31) + 5)  # NBD_REP_ERR_TLS_REQD


def test_a_failed_migration_leaves_the_vm_running_on_the_source_and_nothing_on_the_target(
        hosts: tuple[QemuDriver, QemuDriver], image: Path, bridge: str,
        cluster_ca: tuple[bytes, bytes]) -> None:
    source, target = hosts
    vm = definition(image, bridge)
    name = vm.name
    source.define(on(source, vm))
    boot(source, name)
    sh(source, name, COUNTER)
    vm = on(target, vm)

    incoming = mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))
    with pytest.raises(InvalidState):
        mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))  # never over a VM
    target_taps = taps(target, name)
    assert all(host.link_exists(tap) for tap in target_taps)
    mig.abort_incoming(target, name)  # e.g. the target member gave up
    assert not target.vmpath.joinpath(name).exists() and not qemu_pids(target.vmpath)
    assert not volume(target, name).exists()
    assert not any(host.link_exists(tap) for tap in target_taps)
    volume(target, name).mkdir(parents=True)  # a disk of that name on the target's pool
    with pytest.raises(InvalidState):
        mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))
    volume(target, name).rmdir()

    started = time.monotonic()
    with pytest.raises(mig.MigrationError, match="target's disk") as failure:
        mig.migrate_out(source, name, incoming, leaf(cluster_ca), timeout=60)
    print(f"\nfailure: {failure.value} ({time.monotonic() - started:.2f} s)")
    assert source.status(name) == "Running"
    before = int(sh(source, name, "cat /tmp/counter"))
    time.sleep(0.5)
    assert int(sh(source, name, "cat /tmp/counter")) > before

    # A target that vanishes in the middle of the disk mirror or of the RAM transfer: the
    # mirror or the migration fails, and migrate_out itself resumes the source.
    for phase in ("disk", "memory"):
        incoming = mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))
        pid = target.state(name)["pid"]

        def kill_target(report: dict[str, Any], phase: str = phase, pid: int = pid) -> None:
            if report["phase"] == phase and host.is_alive(pid):
                os.kill(pid, signal.SIGKILL)

        with pytest.raises(mig.MigrationError) as failure:
            mig.migrate_out(source, name, incoming, leaf(cluster_ca), progress=kill_target,
                            timeout=60)
        print(f"target killed during {phase}: {failure.value}")
        mig.abort_incoming(target, name)
        assert source.status(name) == "Running"
        assert sh(source, name, "echo alive") == "alive"
    mig.resume_source(source, name)  # idempotent
    with pytest.raises(InvalidState):
        mig.finish_source(source, name)  # it never moved: refuse to drop it
    assert not target.vmpath.joinpath(name).exists() and not qemu_pids(target.vmpath)
    assert not volume(target, name).exists()
    source.stop(name, force=True, timeout=0)
    source.delete(name)


def test_a_peer_with_the_wrong_certificate_gets_nothing_and_the_vm_runs_on(
        hosts: tuple[QemuDriver, QemuDriver], image: Path, bridge: str,
        cluster_ca: tuple[bytes, bytes], foreign_ca: tuple[bytes, bytes]) -> None:
    """Mutual authentication: a target outside the cluster, a source outside it (that
    trusts the cluster: only the target's check stops it), and a target of the cluster
    whose certificate does not name TLS_HOSTNAME are each refused at the first connection
    (the mirror's); the source runs on, the target is dropped."""
    source, target = hosts
    vm = definition(image, bridge)
    name = vm.name
    source.define(on(source, vm))
    boot(source, name)
    sh(source, name, COUNTER)
    vm = on(target, vm)
    cases = {"a foreign target": (leaf(foreign_ca), leaf(cluster_ca)),
             "a foreign source": (leaf(cluster_ca), leaf(foreign_ca, cluster_ca[0])),
             "a misnamed target": (leaf(cluster_ca, hosts=("127.0.0.1",)),
                                   leaf(cluster_ca))}
    for case, (target_tls, source_tls) in cases.items():
        incoming = mig.prepare_incoming(target, vm, "127.0.0.1", target_tls)
        started = time.monotonic()
        with pytest.raises(mig.MigrationError, match="target's disk") as failure:
            mig.migrate_out(source, name, incoming, source_tls, timeout=60)
        print(f"\n{case}: {failure.value} ({time.monotonic() - started:.2f} s)")
        assert target.status(name) == "Starting"  # still waiting: nothing arrived
        with pytest.raises(InvalidState, match="cannot finish"):  # at once, not waiting
            mig.finish_incoming(target, name, timeout=5)
        mig.abort_incoming(target, name)
        assert source.status(name) == "Running" and no_credentials_left(source, name)
        before = int(sh(source, name, "cat /tmp/counter"))
        time.sleep(0.3)
        assert int(sh(source, name, "cat /tmp/counter")) > before
    assert not target.vmpath.joinpath(name).exists() and not qemu_pids(target.vmpath)

    # The same QEMU still migrates once given the right credentials.
    incoming = mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))
    assert mig.migrate_out(source, name, incoming, leaf(cluster_ca), timeout=120).tls
    mig.finish_incoming(target, name)
    mig.finish_source(source, name)
    source.delete(name)
    assert int(sh(target, name, "cat /tmp/counter")) > 0
    target.stop(name, force=True, timeout=0)
    target.delete(name)


def die_sending(source: QemuDriver, name: str, incoming: mig.Incoming,
                credentials: mig.Credentials, at: str) -> None:
    """``migrate_out`` in a process killed -9 at ``at`` (``dying_migration``): what a
    member's daemon killed while it sends the VM leaves in QEMU."""
    doc = {"vmpath": str(source.vmpath), "name": name, "incoming": incoming.to_json(),
           "at": at, "credentials": [pem.decode() for pem in (
               credentials.ca_pem, credentials.cert_pem, credentials.key_pem)]}
    child = subprocess.run([sys.executable, "-m", "tests.integration.dying_migration"],
                           input=json.dumps(doc).encode(), capture_output=True, timeout=180,
                           check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode(errors="replace")


def test_a_migration_whose_sender_was_killed_ends_and_the_vm_moves_again(
        hosts: tuple[QemuDriver, QemuDriver], image: Path, bridge: str,
        cluster_ca: tuple[bytes, bytes], base: Path) -> None:
    """The process following the migration dies (kill -9 of the source member's daemon).
    At the switch-over QEMU has stopped the guest and waits for ever; mid-mirror it goes on
    mirroring. Either way the mark says so, and once the target is dropped (the move is
    undone) ``resume_source`` runs the same guest again (what the agent does), or the next
    ``migrate_out`` does it first, and the VM migrates."""
    source, target = hosts
    vm = definition(image, bridge)
    name = vm.name
    source.define(on(source, vm))
    boot(source, name)
    sh(source, name, COUNTER)
    boot_id = sh(source, name, "cat /proc/sys/kernel/random/boot_id")
    vm = on(target, vm)

    incoming = mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))
    die_sending(source, name, incoming, leaf(cluster_ca), "switchover")
    assert mig.outgoing_left(source, name)
    time.sleep(1)
    assert source.status(name) == "Frozen"  # the guest waits for a continue never sent
    mig.abort_incoming(target, name)  # the undo drops the target first
    assert source.status(name) == "Frozen"  # QEMU does not resume it by itself
    mig.resume_source(source, name)
    assert source.status(name) == "Running" and not mig.outgoing_left(source, name)
    assert no_credentials_left(source, name)
    wait_for_agent(source.vm_dir(name), BOOT_TIMEOUT)  # stopped a while: slow at first
    before = int(sh(source, name, "cat /tmp/counter"))
    time.sleep(0.5)
    assert int(sh(source, name, "cat /tmp/counter")) > before
    assert sh(source, name, "cat /proc/sys/kernel/random/boot_id") == boot_id

    incoming = mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))
    die_sending(source, name, incoming, leaf(cluster_ca), "disk")
    assert mig.outgoing_left(source, name)
    mig.abort_incoming(target, name)
    # Nobody resumed it: the next migration clears the dead one's mirror and NBD node.
    # It is the migration that lost guest writes under TCG most often (tcg_ram.py).
    incoming = mig.prepare_incoming(target, vm, "127.0.0.1", leaf(cluster_ca))
    assert mig.migrate_out(source, name, incoming, leaf(cluster_ca), timeout=120).tls
    assert same_ram(source, target, name, base)
    assert mig.incoming_left(target, name)  # paused until told: the mark says so
    mig.finish_incoming(target, name)
    assert not mig.incoming_left(target, name)
    mig.finish_source(source, name)
    assert not mig.outgoing_left(source, name)
    source.delete(name)
    wait_for_agent(target.vm_dir(name), BOOT_TIMEOUT)
    assert sh(target, name, "cat /proc/sys/kernel/random/boot_id") == boot_id
    target.stop(name, force=True, timeout=0)
    target.delete(name)


@pytest.fixture(scope="module")
def uefi_image(base: Path) -> Path:
    """The busybox VM as an LXD-style image: no kernel files, boots through OVMF."""
    return unpack_vm_image(build_busybox_vm_image(base / "build-uefi", uefi=True),
                           base / "image-uefi")


def test_a_uefi_vm_moves_live_and_its_firmware_boots_it_again_on_the_target(
        hosts: tuple[QemuDriver, QemuDriver], uefi_image: Path, bridge: str,
        cluster_ca: tuple[bytes, bytes], base: Path) -> None:
    source, target = hosts
    vm = definition(uefi_image, bridge)
    name = vm.name
    source.define(on(source, vm))
    print(f"\nUEFI boot: {boot(source, name):.1f} s")
    sh(source, name, COUNTER)
    boot_id = sh(source, name, "cat /proc/sys/kernel/random/boot_id")
    before = int(sh(source, name, "cat /tmp/counter"))

    incoming = mig.prepare_incoming(target, on(target, vm), "127.0.0.1", leaf(cluster_ca))
    vars_file = volume(target, name) / cl.VARS  # the target's own copy, the same size
    assert vars_file.stat().st_size == (volume(source, name) / cl.VARS).stat().st_size
    stats = mig.migrate_out(source, name, incoming, leaf(cluster_ca), downtime_ms=300)
    print(f"UEFI migration: {stats}")
    assert same_ram(source, target, name, base)
    mig.finish_incoming(target, name)
    mig.finish_source(source, name)
    source.delete(name)
    # The agent's channel reconnects on the target; on a loaded CI host its first HELLO
    # once took over the 5 s that exec allows (a VM migrated under TCG with OVMF).
    wait_for_agent(target.vm_dir(name), BOOT_TIMEOUT)
    assert int(sh(target, name, "cat /tmp/counter")) > before
    assert sh(target, name, "cat /proc/sys/kernel/random/boot_id") == boot_id

    # A reboot on the target runs the migrated firmware again, from the target's VARS.
    target.exec(name, ["sh", "-c", "(sleep 1; reboot -f) </dev/null >/dev/null 2>&1 &"])
    deadline = time.monotonic() + BOOT_TIMEOUT * 3
    while READY_MARKER not in target.log_path(name).read_text(errors="replace"):
        assert time.monotonic() < deadline, target.log_path(name).read_text(errors="replace")
        time.sleep(0.2)
    wait_for_agent(target.vm_dir(name), BOOT_TIMEOUT)
    assert sh(target, name, "cat /proc/sys/kernel/random/boot_id") != boot_id
    target.stop(name, force=True, timeout=0)
    target.delete(name)
