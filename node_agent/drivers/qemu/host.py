"""Host facts about a VM: its QEMU process (/proc) and its tap devices (``ip``, /sys).

Reads are plain kernel-file reads (cheap: ``state`` is polled). Tap devices are made
persistent with ``ip tuntap`` before QEMU starts, so they must be removed explicitly after
it exits (a SIGKILLed QEMU cannot).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError
from node_agent.drivers.lxc_state import read_int, read_text

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_pid(pidfile: Path) -> int:
    text = read_text(pidfile).strip()
    return int(text) if text.isdigit() else 0


def is_alive(pid: int) -> bool:
    """True for a live process (a zombie waiting for its reaper is not)."""
    stat = read_text(f"/proc/{pid}/stat")
    if not stat:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])


def owns(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and ``marker`` is one of its arguments' substrings (a
    pid file can outlive its process and the pid can be reused)."""
    if pid <= 0 or not is_alive(pid):
        return False
    return marker in read_text(f"/proc/{pid}/cmdline").replace("\0", " ")


def cpu_ns(pid: int) -> int:
    """User + system CPU time of the process, in ns."""
    fields = read_text(f"/proc/{pid}/stat").rpartition(")")[2].split()
    if len(fields) < 13:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLOCK_TICKS


def memory(pid: int) -> dict[str, int]:
    """LXD's memory map from the QEMU process: resident and peak resident bytes."""
    values = {}
    for line in read_text(f"/proc/{pid}/status").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSwap"):
            values[key] = int(rest.split()[0]) * 1024
    return {"usage": values.get("VmRSS", 0), "usage_peak": values.get("VmHWM", 0),
            "swap_usage": values.get("VmSwap", 0), "swap_usage_peak": 0}


def _ip(*args: str) -> None:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"ip {' '.join(args)} failed: {exc}") from exc
    if done.returncode != 0:
        raise DriverError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def create_tap(tap: str, bridge: str) -> None:
    """A persistent tap enslaved to ``bridge`` and up (a stale one is replaced)."""
    if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
        raise DriverError(f"bridge {bridge!r} does not exist")
    remove_tap(tap)
    _ip("tuntap", "add", "dev", tap, "mode", "tap")
    try:
        _ip("link", "set", "dev", tap, "master", bridge)
        _ip("link", "set", "dev", tap, "up")
    except DriverError:
        remove_tap(tap)
        raise


def remove_tap(tap: str) -> None:
    if link_exists(tap):
        _ip("link", "delete", "dev", tap)


def tap_network(device: str, tap: str, hwaddr: str) -> dict[str, Any]:
    """One NIC of LXD's ``network`` map, counted from the tap (whose receive is the
    guest's send). Addresses are unknown to the host (the agent could tell)."""
    stats = f"/sys/class/net/{tap}/statistics/"

    def count(name: str) -> int:
        return read_int(stats + name)

    operstate = read_text(f"/sys/class/net/{tap}/operstate").strip()
    return {
        "addresses": [],
        "counters": {
            "bytes_received": count("tx_bytes"), "packets_received": count("tx_packets"),
            "errors_received": count("tx_errors"), "packets_dropped_inbound":
                count("tx_dropped"),
            "bytes_sent": count("rx_bytes"), "packets_sent": count("rx_packets"),
            "errors_sent": count("rx_errors"), "packets_dropped_outbound": count("rx_dropped"),
        },
        "hwaddr": hwaddr, "host_name": tap, "mtu": read_int(f"/sys/class/net/{tap}/mtu"),
        "state": "down" if operstate == "down" else "up", "type": "broadcast",
    }
