"""The KVM probe and the accelerator choice, with fake QEMU binaries (scripts) standing in
for a working, failing or hanging KVM at each stage (boot sector, Linux guest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_agent.drivers.qemu import accel, host
from node_agent.drivers.qemu.accel_choice import AcceleratorChoice

needs_kvm_node = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                    reason="the probe checks /dev/kvm before running QEMU")


def fake_qemu(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-qemu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_the_boot_sector_is_bootable() -> None:
    sector = accel.boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")


def test_no_qemu_means_tcg(tmp_path: Path) -> None:
    result = accel.probe_kvm(qemu=str(tmp_path / "missing"))
    assert result.name == "tcg" and "not found" in result.reason


# A fake QEMU whose boot sector stage passes (exit through the debug port) and whose
# Linux guest stage runs ``guest`` (a shell snippet).
def staged_qemu(tmp_path: Path, guest: str) -> str:
    return fake_qemu(tmp_path, f'case "$*" in *isa-debug-exit*) exit 133;; esac\n{guest}')


def fake_guest(tmp_path: Path) -> accel.GuestKernel:
    for name in ("vmlinuz", "initrd"):
        (tmp_path / name).write_bytes(b"not a kernel")
    return accel.GuestKernel(tmp_path / "vmlinuz", tmp_path / "initrd")


@needs_kvm_node
def test_a_boot_sector_alone_does_not_prove_kvm(tmp_path: Path) -> None:
    result = accel.probe_kvm(qemu=fake_qemu(tmp_path, "exit 133"))
    assert result.name == "tcg" and result.unproven


@needs_kvm_node
def test_a_linux_guest_that_never_answers_means_tcg(tmp_path: Path) -> None:
    started = time.monotonic()
    result = accel.probe_kvm(qemu=staged_qemu(tmp_path, "exec sleep 60"),
                             guest=fake_guest(tmp_path), guest_timeout=1.5)
    assert result.name == "tcg" and "did not answer within 1.5 s" in result.reason
    assert "printed nothing" in result.reason and not result.unproven
    assert time.monotonic() - started < 6


@needs_kvm_node
def test_a_qemu_that_aborts_under_kvm_means_tcg_with_its_message(tmp_path: Path) -> None:
    qemu = staged_qemu(tmp_path, "echo 'qemu: error: failed to set MSR 0x10a to 0x69' >&2; "
                                 "exit 134")
    result = accel.probe_kvm(qemu=qemu, guest=fake_guest(tmp_path), guest_timeout=5)
    assert result.name == "tcg"
    assert "exited (134)" in result.reason and "failed to set MSR" in result.reason


@needs_kvm_node
def test_the_guest_stage_gets_the_flags_vms_get(tmp_path: Path) -> None:
    seen = tmp_path / "argv"
    qemu = staged_qemu(tmp_path, f'echo "$@" > {seen}; exit 1')
    accel.probe_kvm(qemu=qemu, guest=fake_guest(tmp_path), guest_timeout=5)
    argv = seen.read_text()
    assert "-machine q35 -accel kvm -cpu host" in argv and "org.corral.agent" in argv


@needs_kvm_node
def test_a_failing_kvm_means_tcg_with_its_message(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "echo 'warning: noise' >&2; echo 'kvm: no luck' >&2; exit 1")
    result = accel.probe_kvm(qemu=qemu)
    assert (result.name, result.reason) == ("tcg", "KVM test guest failed (exit 1): kvm: no luck")


@needs_kvm_node
def test_a_hanging_kvm_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    qemu = fake_qemu(tmp_path, f"sleep 60 & echo $! > {marker}; wait")
    started = time.monotonic()
    result = accel.probe_kvm(timeout=0.5, qemu=qemu)
    assert result.name == "tcg" and "hangs" in result.reason
    assert time.monotonic() - started < 3
    child = int(marker.read_text())
    deadline = time.monotonic() + 2
    while host.is_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not host.is_alive(child)  # gone, or a zombie waiting for its reaper


@needs_kvm_node
def test_the_probe_works_in_the_daemons_directory_and_clears_a_killed_ones(
        tmp_path: Path) -> None:
    workdir = tmp_path / "vms"
    stale = workdir / "corral-kvm-probe-left-by-a-killed-daemon"
    stale.mkdir(parents=True)
    (stale / "boot.img").write_bytes(b"\0" * 512)
    seen = tmp_path / "seen"
    qemu = fake_qemu(tmp_path, f'echo "$@" > {seen}; exit 133')
    assert accel.probe_kvm(qemu=qemu, workdir=workdir).unproven
    assert f"file={workdir}/corral-kvm-probe-" in seen.read_text()
    assert list(workdir.iterdir()) == []


def test_the_guest_work_is_judged_by_its_answer(tmp_path: Path) -> None:
    wrong = accel._judge(0, b"d41d8cd98f00b204e9800998ecf8427e  -\n", tmp_path)
    assert wrong.name == "tcg" and "wrong" in wrong.reason
    assert accel._judge(1, accel.PAGING_ANSWER, tmp_path).name == "tcg"


def test_modes_pin_the_accelerator_without_a_probe(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "echo probed >> " + str(tmp_path / "probed") + "; exit 133")
    assert AcceleratorChoice(tmp_path, qemu, "tcg").current().name == "tcg"
    assert AcceleratorChoice(tmp_path, qemu, "kvm").current().name == "kvm"
    assert not (tmp_path / "probed").exists()
    with pytest.raises(ValueError):
        AcceleratorChoice(tmp_path, qemu, "xen")


def test_the_environment_pins_where_the_member_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_VM_ACCELERATOR", "tcg")
    assert AcceleratorChoice(tmp_path).mode == "tcg"
    monkeypatch.setenv("CORRAL_VM_ACCELERATOR", "")
    assert AcceleratorChoice(tmp_path).mode == "auto"


def test_a_broken_kvm_wins_over_a_pinned_one(tmp_path: Path) -> None:
    choice = AcceleratorChoice(tmp_path, mode="kvm")
    choice.mark_broken("VM v1: internal-error")
    now = choice.current()
    assert now.name == "tcg" and "internal-error" in now.reason
    choice.set_mode("auto")
    assert choice.current().name == "tcg"  # still broken


@needs_kvm_node
def test_an_unproven_answer_is_probed_again_with_a_vms_kernel(tmp_path: Path) -> None:
    count = tmp_path / "guest-runs"
    qemu = staged_qemu(tmp_path, f"echo run >> {count}; exit 1")
    choice = AcceleratorChoice(tmp_path / "vms", qemu, "auto")
    assert choice.current().unproven
    assert choice.known() == choice.current()  # kept: no guest, no new probe
    assert not count.exists()
    assert choice.current(fake_guest(tmp_path)).name == "tcg"
    assert count.read_text() == "run\n"
    assert not choice.current(fake_guest(tmp_path)).unproven  # decided: no third probe
    assert count.read_text() == "run\n"


def test_a_probe_dies_with_the_daemon_that_started_it(tmp_path: Path) -> None:
    """A daemon killed -9 mid-probe must not leave a hung KVM spinning a core."""
    marker = tmp_path / "probe.pid"
    qemu = fake_qemu(tmp_path, f"echo $$ > {marker}; exec sleep 60")
    daemon = subprocess.Popen([sys.executable, "-c",
                               "import sys; from node_agent.drivers.qemu import accel;"
                               "accel._run_boot_sector([sys.argv[1]], 60)", qemu])
    try:
        deadline = time.monotonic() + 10
        while not marker.exists() or not marker.read_text().strip():
            assert time.monotonic() < deadline, "the probe never started"
            time.sleep(0.05)
        probe = int(marker.read_text())
        assert host.is_alive(probe)
    finally:
        daemon.kill()
        daemon.wait()
    deadline = time.monotonic() + 5
    while host.is_alive(probe) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not host.is_alive(probe)  # gone, or a zombie that burns nothing
