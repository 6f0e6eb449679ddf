"""VMs under the QEMU driver: boot time and live migration, real QEMU (TCG here).

    python bench/vm.py [--reps 3] [--sizes 256MiB,1GiB] [--accel tcg]

Needs root, qemu-system-x86 and qemu-utils. Builds the busybox VM image (the kernel comes
from the shared cache once downloaded) and runs two QemuDrivers ("hosts") with separate VM
paths on this machine. Prints medians of ``--reps``:

- boot to userspace: ``start`` until the guest's init prints its ready marker;
- live migration on loopback with ``node_agent.drivers.qemu.migration`` for each guest
  size (``limits.memory``; an idle busybox guest running a counter loop, its disk overlay
  mirrored over NBD): total ms of ``migrate_out`` (disk mirror + RAM), QEMU's downtime, the
  bytes of RAM and disk sent, and the target's prepare and resume (``finish_incoming``).
  Each repetition moves the same guest on (A -> B -> A -> ...). Both streams are TLS, as
  between members: each side a fresh leaf of one generated CA (``corral_shared.tls.issue``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corral_shared import tls  # noqa: E402
from node_agent.drivers.base import InstanceDefinition  # noqa: E402
from node_agent.drivers.qemu import QemuDriver, host  # noqa: E402
from node_agent.drivers.qemu import migration as mig  # noqa: E402
from node_agent.drivers.qemu.agent import wait_for_agent  # noqa: E402
from node_agent.images.busybox_vm import build_busybox_vm_image  # noqa: E402
from node_agent.images.vm_guest import READY_MARKER  # noqa: E402
from node_agent.images.vm_unpack import unpack_vm_image  # noqa: E402

BOOT_TIMEOUT = 90.0
COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done "
           "</dev/null >/dev/null 2>&1 &")


def boot(driver: QemuDriver, name: str) -> float:
    """Start; seconds until the console shows the ready marker (then waits for the agent)."""
    started = time.perf_counter()
    driver.start(name)
    deadline = time.monotonic() + BOOT_TIMEOUT
    while READY_MARKER not in driver.log_path(name).read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"VM {name} did not boot in {BOOT_TIMEOUT:g} s")
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    wait_for_agent(driver.vm_dir(name), BOOT_TIMEOUT)
    return seconds


def definition(image: Path, memory: str) -> InstanceDefinition:
    return InstanceDefinition(f"bench-{secrets.token_hex(3)}", image,
                              {"limits.memory": memory, "limits.cpu": "1"},
                              {"root": {"type": "disk", "path": "/", "pool": "default"}})


def bench_boot(driver: QemuDriver, image: Path, reps: int) -> list[float]:
    seconds = []
    for _ in range(reps):
        vm = definition(image, "256MiB")
        driver.define(vm)
        seconds.append(boot(driver, vm.name))
        driver.stop(vm.name, force=True, timeout=0)
        driver.delete(vm.name)
    return seconds


def credentials(ca: tuple[bytes, bytes]) -> mig.Credentials:
    """A side's TLS identity, as a member makes it from the cluster certificate."""
    cert, key = tls.issue(*ca, "corral migration", [mig.TLS_HOSTNAME])
    return mig.Credentials(ca[0], cert, key)


def bench_migration(a: QemuDriver, b: QemuDriver, image: Path, memory: str,
                    reps: int) -> dict[str, list[float]]:
    ca = tls.generate("corral", ["localhost"])
    vm = definition(image, memory)
    a.define(vm)
    boot(a, vm.name)
    a.exec(vm.name, ["sh", "-c", COUNTER])
    figures: dict[str, list[float]] = {}
    source, target = a, b
    for _ in range(reps):
        started = time.perf_counter()
        incoming = mig.prepare_incoming(target, vm, "127.0.0.1", credentials(ca))
        prepared = time.perf_counter()
        stats = mig.migrate_out(source, vm.name, incoming, credentials(ca), downtime_ms=300)
        moved = time.perf_counter()
        mig.finish_incoming(target, vm.name)
        resumed = time.perf_counter()
        mig.finish_source(source, vm.name)
        source.delete(vm.name)
        for key, value in (("prepare ms", (prepared - started) * 1000),
                           ("total ms", stats.total_ms), ("downtime ms", stats.downtime_ms),
                           ("resume ms", (resumed - moved) * 1000),
                           ("RAM MiB", stats.ram_bytes / 2**20),
                           ("disk MiB", stats.disk_bytes / 2**20)):
            figures.setdefault(key, []).append(value)
        source, target = target, source
    if source.exec(vm.name, ["cat", "/tmp/counter"]).exit_code != 0:  # where it ended up
        raise RuntimeError("the guest lost its counter")
    source.stop(vm.name, force=True, timeout=0)
    source.delete(vm.name)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="256MiB,1GiB")
    parser.add_argument("--accel", default="tcg", help="tcg (KVM hangs on this host) or kvm")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/vm.py needs root (taps, QEMU)", file=sys.stderr)
        return 1
    directory = Path(tempfile.mkdtemp(prefix="corral-bench-vm-"))
    try:
        image = unpack_vm_image(build_busybox_vm_image(directory / "build"),
                                directory / "image")
        a = QemuDriver(directory / "a", accel=args.accel)
        b = QemuDriver(directory / "b", accel=args.accel)
        print(f"QEMU {a.probe().version}, accelerator {args.accel}, busybox VM image, "
              f"median of {args.reps}")
        boots = bench_boot(a, image, args.reps)
        print(f"boot to userspace (256 MiB): {statistics.median(boots):.2f} s  "
              f"(all: {', '.join(f'{s:.2f}' for s in boots)})")
        for size in args.sizes.split(","):
            figures = bench_migration(a, b, image, size, args.reps)
            line = "  ".join(f"{key} {statistics.median(values):.{1 if 'MiB' in key else 0}f}"
                             for key, values in figures.items())
            print(f"live migration {size} on loopback: {line}")
    finally:
        for pid in _qemu_pids(directory):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _qemu_pids(under: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and host.is_alive(int(proc.name)):
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(under).encode() in cmdline:
                pids.append(int(proc.name))
    return pids


if __name__ == "__main__":
    sys.exit(main())
