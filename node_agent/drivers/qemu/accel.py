"""Whether KVM really runs guests here: a probe on a real guest, in a child, with a timeout.

``/dev/kvm`` existing (even opening it) proves little. On machines of one kind KVM hangs
as soon as a vCPU runs; on others (``kvm-pvm``, nested without hardware virtualisation) a
boot sector runs but a Linux guest never prints a line, or QEMU aborts setting an MSR, or
guests die later with ``KVM internal error`` in the page-table path. So the probe has two
stages, each in a child process (its whole process group killed on timeout):

1. a 512-byte boot sector under KVM that exits QEMU through ``isa-debug-exit`` (3 s:
   catches a KVM that hangs at once, cheaply);
2. corral's own guest (a VM image's kernel and initramfs with the corral agent), booted
   under KVM with the flags VMs get (``-machine q35 -cpu host``), until the agent answers,
   then a stretch of work that exercises paging (fork and exec in a loop, 16 MiB touched),
   then ``query-status`` must still say ``running``.

KVM is chosen only if both pass. Without a guest kernel on this member the answer is TCG,
"not proven", and the probe runs again once a VM with a kernel is started
(``choice.AcceleratorChoice``). Scratch files live under the daemon's own directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from node_agent.drivers.qemu import qmp
from node_agent.drivers.qemu.agent import AgentError, AgentUnavailable, exec_in_vm
from node_agent.drivers.qemu.cmdline import AGENT_PORT

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT = 3.0  # the boot sector
GUEST_TIMEOUT = 20.0  # boot to the agent and the paging work (TCG itself needs ~4 s + ~6 s)
GUEST_MEMORY_MIB = 256
# mov al, 0x42 ; out 0xf4, al ; hlt -- isa-debug-exit turns the 0x42 into exit (0x42<<1)|1.
_SECTOR_CODE = b"\xb0\x42\xe6\xf4\xf4"
_EXIT_STATUS = (0x42 << 1) | 1
_SCRATCH_PREFIX = "corral-kvm-probe-"
# Fork+exec 100 times (a page table built and torn down each time), then touch 16 MiB.
PAGING_WORK = ["sh", "-c", "i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done; "
                           "head -c 16777216 /dev/zero | md5sum"]
PAGING_ANSWER = b"2c7ab85a893283e98c931e9511add182"  # md5 of 16 MiB of zeros
NOT_PROVEN = "not proven"  # in the reason of a TCG answer that a guest kernel could change


@dataclass(frozen=True)
class Accel:
    """``name`` is "kvm" or "tcg"; ``reason`` says why; ``seconds`` the probe took."""

    name: str
    reason: str
    seconds: float = 0.0

    @property
    def unproven(self) -> bool:
        """TCG only for want of a guest to prove KVM on: worth probing again with one."""
        return self.name == "tcg" and NOT_PROVEN in self.reason


@dataclass(frozen=True)
class GuestKernel:
    """What the second stage boots: a kernel, an initramfs with the corral agent, and
    the kernel's command line (a VM image's ``kernel``, ``initrd`` and ``cmdline``)."""

    kernel: Path
    initrd: Path
    cmdline: str = "console=ttyS0 panic=-1"


def boot_sector() -> bytes:
    """A bootable 512-byte sector that exits QEMU through isa-debug-exit."""
    return _SECTOR_CODE + b"\0" * (510 - len(_SECTOR_CODE)) + b"\x55\xaa"


def probe_argv(qemu: str, disk: Path) -> list[str]:
    return [qemu, "-accel", "kvm", "-machine", "pc", "-nodefaults", "-no-user-config",
            "-display", "none", "-m", "16", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
            "-drive", f"file={disk},format=raw,if=ide,snapshot=on"]


def guest_argv(qemu: str, guest: GuestKernel, scratch: Path) -> list[str]:
    """The guest stage's QEMU: the machine, CPU model and devices VMs get under KVM
    (cmdline.qemu_argv), without disk or network."""
    return [qemu, "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "q35", "-accel", "kvm", "-cpu", "host",
            "-m", f"{GUEST_MEMORY_MIB}M", "-smp", "1",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
            "-append", guest.cmdline,
            "-qmp", f"unix:{scratch / 'qmp.sock'},server=on,wait=off",
            "-serial", f"file:{scratch / 'console.log'}",
            "-device", "virtio-serial-pci,id=serial0",
            "-chardev", f"socket,id=agent,path={scratch / 'agent.sock'},server=on,wait=off",
            "-device", f"virtserialport,bus=serial0.0,chardev=agent,name={AGENT_PORT}"]


def probe_kvm(timeout: float = PROBE_TIMEOUT, qemu: str = QEMU, workdir: Path | None = None,
              guest: GuestKernel | None = None, guest_timeout: float = GUEST_TIMEOUT) -> Accel:
    """Run both stages now (uncached); never raises, never leaves a process. Scratch
    files go under ``workdir`` (the daemon's own directory), where those of a probe
    killed with its daemon are removed by the next one."""
    started = time.monotonic()
    result = _probe(timeout, qemu, workdir, guest, guest_timeout)
    return Accel(result.name, result.reason, round(time.monotonic() - started, 2))


def _probe(timeout: float, qemu: str, workdir: Path | None, guest: GuestKernel | None,
           guest_timeout: float) -> Accel:
    binary = shutil.which(qemu)
    if binary is None:
        return Accel("tcg", f"{qemu} not found")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "/dev/kvm is missing or not accessible")
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        for stale in workdir.glob(f"{_SCRATCH_PREFIX}*"):
            _kill_probes_of(stale)  # of a daemon killed before PR_SET_PDEATHSIG existed
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=_SCRATCH_PREFIX, dir=workdir) as tmp:
        scratch = Path(tmp)
        disk = scratch / "boot.img"
        disk.write_bytes(boot_sector())
        first = _run_boot_sector(probe_argv(binary, disk), timeout)
        if first.name != "kvm":
            return first
        if guest is None:
            return Accel("tcg", f"KVM ran a boot sector but is {NOT_PROVEN} on a Linux guest: "
                                f"no VM kernel on this member yet (it is probed again when "
                                f"a VM with a kernel starts)")
        return _run_guest(guest_argv(binary, guest, scratch), scratch, guest_timeout)


def _die_with_parent() -> None:
    """In the probe's child, before exec: SIGKILL when the thread that started it dies
    (a daemon killed -9 mid-probe). A hung KVM vCPU spins a whole core: an orphaned
    probe would burn it for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _kill_probes_of(scratch: Path) -> None:
    """SIGKILL any process whose command line names ``scratch`` (a probe left behind)."""
    marker = str(scratch).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _spawn(argv: list[str], stderr: int | IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True,
                            preexec_fn=_die_with_parent)


def _run_boot_sector(argv: list[str], timeout: float) -> Accel:
    try:
        child = _spawn(argv, subprocess.PIPE)
    except OSError as exc:
        return Accel("tcg", f"cannot run {argv[0]}: {exc}")
    try:
        _out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return Accel("tcg", f"KVM did not run a test guest within {timeout:g} s (hangs)")
    if child.returncode == _EXIT_STATUS:
        return Accel("kvm", "KVM ran a test guest")
    return Accel("tcg", f"KVM test guest failed (exit {child.returncode}): "
                        f"{first_error(err.decode(errors='replace'))}")


def _run_guest(argv: list[str], scratch: Path, timeout: float) -> Accel:
    """Boot the guest under KVM until its agent runs the paging work, within
    ``timeout`` s; the child is always killed."""
    err_path = scratch / "qemu.err"
    try:
        with err_path.open("wb") as err:
            child = _spawn(argv, err)
    except OSError as exc:
        return Accel("tcg", f"cannot run {argv[0]}: {exc}")
    try:
        return _await_guest(child, scratch, err_path, time.monotonic() + timeout, timeout)
    finally:
        if child.poll() is None:
            _kill_group(child)


def _await_guest(child: subprocess.Popen[bytes], scratch: Path, err_path: Path,
                 deadline: float, timeout: float) -> Accel:
    while True:
        if child.poll() is not None:
            return Accel("tcg", f"QEMU of the KVM test guest exited ({child.returncode}): "
                                f"{first_error(_read(err_path))}")
        left = deadline - time.monotonic()
        if left <= 0:
            return Accel("tcg", f"a Linux guest under KVM did not answer within {timeout:g} s "
                                f"(hangs){_console_hint(scratch)}")
        try:
            result = exec_in_vm(scratch, PAGING_WORK, timeout=max(1.0, left),
                                hello_timeout=min(1.0, max(0.2, left)))
        except AgentUnavailable:
            time.sleep(0.1)
            continue
        except AgentError as exc:
            return Accel("tcg", f"the KVM test guest broke off its work: {exc}")
        return _judge(result.exit_code, result.stdout, scratch)


def _judge(exit_code: int, stdout: bytes, scratch: Path) -> Accel:
    if exit_code != 0 or PAGING_ANSWER not in stdout:
        return Accel("tcg", f"the KVM test guest got its work wrong (exit {exit_code}: "
                            f"{stdout[:80]!r})")
    try:
        status = qmp.execute(scratch / "qmp.sock", "query-status", timeout=2).get("status")
    except (qmp.QmpError, qmp.QmpUnavailable) as exc:
        return Accel("tcg", f"QEMU of the KVM test guest stopped answering: {exc}")
    if status != "running":
        return Accel("tcg", f"the KVM test guest ended in run state {status!r}")
    return Accel("kvm", "KVM booted a Linux guest to its agent and ran paging work")


def first_error(text: str) -> str:
    """The first line of QEMU's stderr that is not a warning."""
    lines = [line for line in text.splitlines() if line.strip() and "warning:" not in line]
    return lines[0] if lines else "no message"


def _console_hint(scratch: Path) -> str:
    printed = len(_read(scratch / "console.log"))
    return "; the guest printed nothing" if printed == 0 else f"; the guest printed {printed} B"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.communicate()
