"""The KVM probe, with fake QEMU binaries (scripts) standing in for a working, failing or
hanging KVM."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node_agent.drivers.qemu import accel, host

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


@needs_kvm_node
def test_a_guest_that_exits_through_the_debug_port_means_kvm(tmp_path: Path) -> None:
    assert accel.probe_kvm(qemu=fake_qemu(tmp_path, "exit 133")).name == "kvm"


@needs_kvm_node
def test_a_failing_kvm_means_tcg_with_its_message(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "echo 'warning: noise' >&2; echo 'kvm: no luck' >&2; exit 1")
    result = accel.probe_kvm(qemu=qemu)
    assert result == accel.Accel("tcg", "KVM test guest failed (exit 1): kvm: no luck")


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
    assert accel.probe_kvm(qemu=qemu, workdir=workdir).name == "kvm"
    assert f"file={workdir}/corral-kvm-probe-" in seen.read_text()
    assert list(workdir.iterdir()) == []
