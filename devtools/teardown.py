"""Remove everything one corral daemon made: its process, containers, VMs, bridges,
dnsmasq, firewall rules and state. Used by ``make demo-clean`` and by tests.

``python -m devtools.teardown DIR`` -- only processes whose pid files live in
DIR are signalled, and only after their command line is checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from node_agent.drivers.qemu import QemuDriver
from node_agent.fencing.watchdog import running_watchdog
from node_agent.idmap import IdMap
from node_agent.network.bridge import BridgeNetwork
from node_agent.node import LocalNode
from node_agent.paths import Paths
from node_agent.storage.btrfs_cli import mounts_below, unmount
from node_agent.storage.errors import StorageError

PLACEHOLDER_ADDRESS = "10.0.0.1/24"  # teardown finds what to remove by name, pid file and tag


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_daemon(paths: Paths, timeout: float = 15.0) -> None:
    try:
        pid = int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return
    cmdline = _cmdline(pid)
    if not ("corral" in cmdline or "corral_cli.main" in cmdline) or "daemon" not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _cmdline(pid):
        os.kill(pid, signal.SIGKILL)


def stop_watchdog(paths: Paths) -> None:
    """Kill the daemon's fencing watchdog (its pid file and command line checked): it
    would outlive the daemon until the HA instances it guards are gone."""
    pid = running_watchdog(paths.root)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_containers(paths: Paths) -> None:
    if not paths.containers.is_dir():
        return
    for entry in sorted(paths.containers.iterdir()):
        if (entry / "config").exists():
            subprocess.run(["lxc-stop", "-k", "-n", entry.name, "-P", str(paths.containers)],
                           capture_output=True, timeout=60, check=False)


def stop_vms(paths: Paths) -> None:
    """Kill this daemon's QEMU processes (found by pid file and checked command line by
    the driver) and remove their taps."""
    if not paths.vms.is_dir():
        return
    driver = QemuDriver(paths.vms, accel="tcg")
    for entry in sorted(paths.vms.iterdir()):
        if entry.is_dir():
            with contextlib.suppress(Exception):  # stopped already, or never defined
                driver.stop(entry.name, True, 0)


def remove_cgroups(paths: Paths) -> None:
    """Drop this daemon's cgroup prefix once its containers have stopped."""
    driver = LocalNode.open(paths, IdMap(0, 0, 0, 0)).driver
    for _ in range(20):
        driver.remove_cgroup_prefix()
        if not any((Path(h) / driver.cgroup_prefix).exists() for h in driver.mounts.hierarchies):
            return
        time.sleep(0.1)


def unmount_pools(paths: Paths) -> None:
    """Unmount the storage pools mounted under the daemon's root (a btrfs loop file's
    device goes with its last mount), so removing the root never reaches into them."""
    if not paths.storage_pools.is_dir():
        return
    for mount in mounts_below(paths.storage_pools):
        with contextlib.suppress(StorageError):
            unmount(mount)


def remove_networks(paths: Paths) -> None:
    if not paths.networks.is_dir():
        return
    for entry in sorted(paths.networks.iterdir()):
        if entry.is_dir():
            BridgeNetwork(entry.name, PLACEHOLDER_ADDRESS, entry).teardown()


def teardown(root: Path) -> None:
    paths = Paths(root)
    if not root.exists():
        return
    stop_daemon(paths)
    stop_watchdog(paths)
    stop_containers(paths)
    stop_vms(paths)
    remove_cgroups(paths)
    remove_networks(paths)
    unmount_pools(paths)
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m devtools.teardown CORRAL_DIR", file=sys.stderr)
        return 2
    teardown(Path(sys.argv[1]))
    print(f"removed corral state, containers and networks of {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
