"""Which accelerator QEMU can really use here: KVM when it runs guest code, else TCG.

``/dev/kvm`` existing (even opening it) proves little: on some hosts KVM hangs as soon as
a vCPU runs. So the probe boots a 512-byte boot sector under KVM in a child process; the
sector writes to an ``isa-debug-exit`` port, which makes QEMU exit with a known status.
No answer within the timeout means KVM hangs: the child (and its process group) is killed
and TCG is used. The answer is cached for the life of the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT = 3.0
# mov al, 0x42 ; out 0xf4, al ; hlt -- isa-debug-exit turns the 0x42 into exit (0x42<<1)|1.
_SECTOR_CODE = b"\xb0\x42\xe6\xf4\xf4"
_EXIT_STATUS = (0x42 << 1) | 1


@dataclass(frozen=True)
class Accel:
    """``name`` is "kvm" or "tcg"; ``reason`` says why (shown by ``probe``)."""

    name: str
    reason: str


_lock = threading.Lock()
_cached: Accel | None = None


_SCRATCH_PREFIX = "corral-kvm-probe-"


def boot_sector() -> bytes:
    """A bootable 512-byte sector that exits QEMU through isa-debug-exit."""
    return _SECTOR_CODE + b"\0" * (510 - len(_SECTOR_CODE)) + b"\x55\xaa"


def probe_argv(qemu: str, disk: Path) -> list[str]:
    return [qemu, "-accel", "kvm", "-machine", "pc", "-nodefaults", "-no-user-config",
            "-display", "none", "-m", "16", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
            "-drive", f"file={disk},format=raw,if=ide,snapshot=on"]


def probe_kvm(timeout: float = PROBE_TIMEOUT, qemu: str = QEMU,
              workdir: Path | None = None) -> Accel:
    """Run the boot-sector probe now (uncached); never raises, never leaves a process.
    Its scratch files go under ``workdir`` (the daemon's own directory), where those of
    a probe killed with its daemon are removed by the next one."""
    binary = shutil.which(qemu)
    if binary is None:
        return Accel("tcg", f"{qemu} not found")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "/dev/kvm is missing or not accessible")
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        for stale in workdir.glob(f"{_SCRATCH_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=_SCRATCH_PREFIX, dir=workdir) as tmp:
        disk = Path(tmp) / "boot.img"
        disk.write_bytes(boot_sector())
        return _run_probe(probe_argv(binary, disk), timeout)


def _run_probe(argv: list[str], timeout: float) -> Accel:
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return Accel("tcg", f"cannot run {argv[0]}: {exc}")
    try:
        _out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return Accel("tcg", f"KVM did not run a test guest within {timeout:g} s (hangs)")
    if child.returncode == _EXIT_STATUS:
        return Accel("kvm", "KVM ran a test guest")
    lines = [line for line in err.decode(errors="replace").splitlines()
             if line.strip() and "warning:" not in line]
    first = lines[:1]
    return Accel("tcg", f"KVM test guest failed (exit {child.returncode}): "
                        f"{first[0] if first else 'no message'}")


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.communicate()


def accelerator(workdir: Path | None = None) -> Accel:
    """The cached probe result (the first caller runs the probe; others wait for it)."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = probe_kvm(workdir=workdir)
        return _cached
