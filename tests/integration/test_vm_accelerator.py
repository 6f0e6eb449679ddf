"""A VM is never lost to a broken accelerator: real QEMU, made to fail under "KVM" by a
wrapper at the process boundary (the driver runs the wrapper as its QEMU binary).

- ``refusing``: QEMU refuses to start under KVM (as kvm-pvm's QEMU aborts setting an MSR);
- ``lying``: "KVM" is really TCG, and a relay on the VM's QMP socket reports the run state
  ``internal-error`` once told to (as QEMU does when KVM fails a guest).

Either way the VM must end up running under TCG, its agent answering, its disk kept.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from node_agent.drivers.qemu import QemuDriver
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu.agent import exec_in_vm, wait_for_agent
from node_agent.vm_guard import rescue_vms
from tests.integration.test_qemu_driver import (  # noqa: F401 - fixtures
    BOOT_TIMEOUT,
    base,
    boot,
    bridge,
    define,
    image,
    tarball,
)

pytestmark = pytest.mark.real
REAL_QEMU = "qemu-system-x86_64"
LIAR = Path(__file__).with_name("qmp_liar.py")


def wrapper(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)
    return str(path)


def refusing_qemu(directory: Path) -> str:
    return wrapper(directory, "qemu-refusing", f"""
case " $* " in *" -accel kvm "*)
  echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2; exit 1;;
esac
exec {REAL_QEMU} "$@"
""")


def lying_qemu(directory: Path) -> str:
    """Under "KVM": TCG really, its QMP behind the relay; under TCG: plain QEMU."""
    return wrapper(directory, "qemu-lying", f"""
case " $* " in *" -accel kvm "*) ;; *) exec {REAL_QEMU} "$@";; esac
args=(); qmp=""; pidfile=""; prev=""
for a in "$@"; do
  case "$prev/$a" in
    -accel/kvm) a=tcg;;
    -cpu/host) a=max;;
    -pidfile/*) pidfile=$a;;
    -qmp/*/qmp.sock,*) qmp=${{a#unix:}}; qmp=${{qmp%%,*}}; a="unix:$qmp.real,server=on,wait=off";;
  esac
  args+=("$a"); prev=$a
done
{REAL_QEMU} "${{args[@]}}" || exit $?
setsid {sys.executable} {LIAR} "$qmp" "$pidfile" </dev/null >/dev/null 2>&1 &
for i in $(seq 100); do [ -S "$qmp" ] && exit 0; sleep 0.05; done
exit 1
""")


def _stop(driver: QemuDriver, name: str) -> None:
    try:
        driver.stop(name, force=True, timeout=0)
    except Exception:  # noqa: BLE001 - already stopped
        pass
    driver.delete(name)


def test_a_vm_that_qemu_refuses_to_start_under_kvm_runs_under_tcg(
        base: Path, image: Path, bridge: str) -> None:  # noqa: F811
    driver = QemuDriver(base / "vms-refused", qemu=refusing_qemu(base), accel="kvm")
    name = define(driver, image, bridge)
    try:
        boot(driver, name)
        assert driver.running_under(name) == "tcg"
        known = driver.choice.known()
        assert known is not None and known.name == "tcg"
        assert "failed to start under KVM" in known.reason and "MSR" in known.reason
        assert exec_in_vm(driver.vm_dir(name), ["echo", "alive"]).stdout == b"alive\n"
    finally:
        _stop(driver, name)


def test_a_vm_whose_kvm_breaks_at_run_time_runs_again_under_tcg_with_its_disk(
        base: Path, image: Path, bridge: str) -> None:  # noqa: F811
    driver = QemuDriver(base / "vms-lied", qemu=lying_qemu(base), accel="kvm")
    name = define(driver, image, bridge)
    try:
        boot(driver, name)
        assert driver.running_under(name) == "kvm"
        assert rescue_vms(driver) == []  # a healthy guest is left alone
        exec_in_vm(driver.vm_dir(name), ["sh", "-c", "echo kept > /mnt/root/marker; sync"])
        (driver.vm_dir(name) / f"{cl.QMP}.broken").touch()
        assert "internal-error" in driver.accelerator_failure(name)
        started = time.monotonic()
        assert rescue_vms(driver) == [name]
        wait_for_agent(driver.vm_dir(name), BOOT_TIMEOUT)
        print(f"\nrunning again under TCG after {time.monotonic() - started:.1f} s")
        assert driver.running_under(name) == "tcg" and driver.status(name) == "Running"
        assert driver.choice.current().name == "tcg"
        out = exec_in_vm(driver.vm_dir(name), ["cat", "/mnt/root/marker"]).stdout
        assert out == b"kept\n"
        assert rescue_vms(driver) == []
    finally:
        _stop(driver, name)
