"""Parsers and cheap readers behind ``LxcDriver.state``: cgroup mounts, usage, network.

The parsers are pure (unit-tested with captured file contents). State must stay cheap (it
is polled for every listed instance), so it reads kernel files instead of forking:
``/proc/<init>/net/{dev,fib_trie,route,if_inet6}`` show the container's network namespace
from the host. Never read through ``/proc/<pid>/root``: a container controls its own
symlinks there and could point them at host files.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral_shared.codes import status_pair
from node_agent.drivers.lxc_config import HostFacts, parse_cpuset

# liblxc state -> (LXD status, LXD status code)
STATUS: dict[str, tuple[str, int]] = {
    "STOPPED": status_pair("Stopped"),
    "STARTING": status_pair("Starting"),
    "RUNNING": status_pair("Running"),
    "STOPPING": status_pair("Stopping"),
    "ABORTING": status_pair("Aborting"),
    "FREEZING": status_pair("Freezing"),
    "FROZEN": status_pair("Frozen"),
    "THAWED": status_pair("Running"),  # liblxc's thawed is LXD's Running, not Thawed
}
ERROR_STATUS = status_pair("Error")
CONTROLLERS = ("cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "blkio")


@dataclass(frozen=True)
class CgroupMounts:
    """Mount points: each v1 controller's hierarchy, the unified (v2) one if any, and every
    hierarchy (named ones such as ``name=systemd`` too: liblxc makes cgroups there as well)."""

    v1: dict[str, str] = field(default_factory=dict)
    v2: str | None = None
    hierarchies: tuple[str, ...] = ()


def parse_cgroup_mounts(mountinfo: str) -> CgroupMounts:
    """Cgroup mounts from ``/proc/self/mountinfo`` text (first mount of each wins)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    every: dict[str, None] = {}
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        mountpoint = fields[4].replace("\\040", " ")
        if rest[0] in ("cgroup", "cgroup2"):
            every.setdefault(mountpoint)
        if rest[0] == "cgroup2" and v2 is None:
            v2 = mountpoint
        elif rest[0] == "cgroup":
            for option in rest[2].split(","):
                if option in CONTROLLERS:
                    v1.setdefault(option, mountpoint)
    return CgroupMounts(v1, v2, tuple(every))


def _hex_ipv4(text: str) -> int:
    """``/proc/net/route`` writes addresses as little-endian hex."""
    return int.from_bytes(bytes.fromhex(text), "little")


def parse_routes(text: str) -> list[tuple[str, int, int]]:
    """Connected routes ``(iface, network, mask)`` (gateway 0) from ``/proc/<pid>/net/route``."""
    routes: list[tuple[str, int, int]] = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[2] == "00000000":
            try:
                routes.append((cols[0], _hex_ipv4(cols[1]), _hex_ipv4(cols[7])))
            except ValueError:
                continue
    return routes


def parse_fib_local(text: str) -> list[str]:
    """The container's own IPv4 addresses: ``/32 host LOCAL`` leaves of ``fib_trie``."""
    found: list[str] = []
    last = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last and last not in found:
            found.append(last)
    return found


def ipv4_addresses(fib_trie: str, routes: str) -> dict[str, list[dict[str, str]]]:
    """LXD address records per interface; the interface and prefix come from the connected
    route that holds the address (loopback addresses belong to ``lo``, prefix 8)."""
    table = parse_routes(routes)
    result: dict[str, list[dict[str, str]]] = {}
    for address in parse_fib_local(fib_trie):
        value = int(ipaddress.IPv4Address(address))
        if address.startswith("127."):
            iface, prefix, scope = "lo", 8, "local"
        else:
            best = [(bin(mask).count("1"), name) for name, net, mask in table
                    if value & mask == net & mask and mask]
            if not best:
                continue
            prefix, iface = max(best)
            scope = "global"
        result.setdefault(iface, []).append(
            {"family": "inet", "address": address, "netmask": str(prefix), "scope": scope})
    return result


def ipv6_addresses(if_inet6: str) -> dict[str, list[dict[str, str]]]:
    """LXD address records per interface from ``/proc/<pid>/net/if_inet6``."""
    result: dict[str, list[dict[str, str]]] = {}
    for line in if_inet6.splitlines():
        cols = line.split()
        if len(cols) < 6 or len(cols[0]) != 32:
            continue
        address = ipaddress.IPv6Address(int(cols[0], 16))
        scope = ("local" if address.is_loopback else "link" if address.is_link_local
                 else "global")
        result.setdefault(cols[5], []).append(
            {"family": "inet6", "address": str(address), "netmask": str(int(cols[2], 16)),
             "scope": scope})
    return result


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """LXD counters per interface from ``/proc/<pid>/net/dev`` (container's point of view)."""
    result: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, numbers = line.partition(":")
        cols = numbers.split()
        if not sep or len(cols) < 16 or not all(col.isdecimal() for col in cols):
            continue
        values = [int(col) for col in cols]
        result[name.strip()] = {
            "bytes_received": values[0], "packets_received": values[1],
            "errors_received": values[2], "packets_dropped_inbound": values[3],
            "bytes_sent": values[8], "packets_sent": values[9],
            "errors_sent": values[10], "packets_dropped_outbound": values[11],
        }
    return result


@dataclass(frozen=True)
class HostSide:
    """What the host knows of a container NIC: its MAC, host veth, MTU and link state."""

    hwaddr: str = ""
    host_name: str = ""
    mtu: int = 0
    state: str = "up"


def network_state(net_dev: str, fib_trie: str, routes: str, if_inet6: str,
                  nics: dict[str, HostSide]) -> dict[str, dict[str, Any]]:
    """The ``network`` map of an LXD InstanceState from the container's /proc files."""
    counters = parse_net_dev(net_dev)
    v4, v6 = ipv4_addresses(fib_trie, routes), ipv6_addresses(if_inet6)
    network: dict[str, dict[str, Any]] = {}
    for iface, counts in counters.items():
        loopback = iface == "lo"
        side = nics.get(iface, HostSide(mtu=65536 if loopback else 0))
        network[iface] = {
            "addresses": v4.get(iface, []) + v6.get(iface, []),
            "counters": counts,
            "hwaddr": side.hwaddr,
            "host_name": side.host_name,
            "mtu": side.mtu,
            "state": side.state,
            "type": "loopback" if loopback else "broadcast",
        }
    return network


def stopped_state(status: str = "Stopped", code: int = 102) -> dict[str, Any]:
    """What LXD reports for an instance without processes."""
    return {"status": status, "status_code": code, "pid": 0, "processes": 0,
            "cpu": {"usage": 0},
            "memory": {"usage": 0, "usage_peak": 0, "swap_usage": 0, "swap_usage_peak": 0},
            "network": None, "disk": {}}


# -- cheap readers (the only I/O here: plain reads of kernel files) ----------------------------


def read_text(path: Path | str) -> str:
    """A kernel file's content, or "" if it is absent (a controller or swap not enabled)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:  # os.read beats open(): state() reads ~10 of these per container
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("ascii", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def read_int(path: Path | str) -> int:
    text = read_text(path).strip()
    return int(text) if text.lstrip("-").isdigit() else 0


def _memory(mounts: CgroupMounts, payload: str) -> dict[str, int]:
    if "memory" in mounts.v1:
        path = f"{mounts.v1['memory']}/{payload}/memory."
        usage, peak = read_int(path + "usage_in_bytes"), read_int(path + "max_usage_in_bytes")
        swap = read_int(path + "memsw.usage_in_bytes")
        swap_peak = read_int(path + "memsw.max_usage_in_bytes")
        return {"usage": usage, "usage_peak": peak, "swap_usage": max(0, swap - usage),
                "swap_usage_peak": max(0, swap_peak - peak)}
    path = f"{mounts.v2}/{payload}/memory."
    return {key: read_int(path + name) for key, name in
            (("usage", "current"), ("usage_peak", "peak"), ("swap_usage", "swap.current"),
             ("swap_usage_peak", "swap.peak"))}


def cgroup_usage(mounts: CgroupMounts, payload: str) -> tuple[int, int, dict[str, int]]:
    """``(processes, cpu ns, memory)`` of the cgroup ``payload`` (relative to each root);
    processes is -1 without a pids controller. Plain string paths: pathlib costs more than
    the reads here."""
    pids_root = mounts.v1.get("pids") or mounts.v2
    processes = read_int(f"{pids_root}/{payload}/pids.current") if pids_root else -1
    cpu = 0
    if "cpuacct" in mounts.v1:
        cpu = read_int(f"{mounts.v1['cpuacct']}/{payload}/cpuacct.usage")
    elif mounts.v2:
        for line in read_text(f"{mounts.v2}/{payload}/cpu.stat").splitlines():
            if line.startswith("usage_usec "):
                cpu = int(line.split()[1]) * 1000
    return processes, cpu, _memory(mounts, payload)


def payload_pids(mounts: CgroupMounts, payload: str) -> list[int]:
    """Every live process in the cgroup ``payload`` and below it (a zombie has left its
    cgroup already); [] when the cgroup is gone."""
    root = mounts.v1.get("pids") or mounts.v2 or next(iter(mounts.v1.values()), None)
    if root is None:
        return []
    pids: list[int] = []
    for directory, _, _ in os.walk(f"{root}/{payload}"):
        pids += [int(pid) for pid in read_text(f"{directory}/cgroup.procs").split()]
    return pids


def is_busybox(pid: int) -> bool:
    """Whether process ``pid`` runs busybox (its executable's name, as the kernel has it)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("busybox")
    except OSError:
        return False


def pending_signals(status: str) -> int:
    """The signals sent to a process and not yet handled (thread and process-wide), as a
    bit mask (bit ``signo - 1``), from its ``/proc/<pid>/status`` text."""
    mask = 0
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd"):
            mask |= int(value.strip() or "0", 16)
    return mask


def signal_pending(pid: int, signo: int) -> bool:
    return bool(pending_signals(read_text(f"/proc/{pid}/status")) >> (signo - 1) & 1)


def host_side(host_name: str, hwaddr: str) -> HostSide:
    """A NIC as the host sees it: its veth's MTU and link state (a veth is down when the
    container's end is)."""
    if not host_name:
        return HostSide(hwaddr=hwaddr)
    sys = f"/sys/class/net/{host_name}/"
    operstate = read_text(sys + "operstate").strip()
    return HostSide(hwaddr, host_name, read_int(sys + "mtu"),
                    "down" if operstate == "down" else "up")


def read_network(pid: int, nics: dict[str, HostSide]) -> dict[str, dict[str, Any]]:
    """The ``network`` map of the container whose init is ``pid``."""
    net = f"/proc/{pid}/net/"
    return network_state(read_text(net + "dev"), read_text(net + "fib_trie"),
                         read_text(net + "route"), read_text(net + "if_inet6"), nics)


def detect_host(mounts: CgroupMounts) -> HostFacts:
    """CPUs of the root cpuset, MemTotal, which controllers are on cgroup v1, and
    whether AppArmor is enabled."""
    root = mounts.v1.get("cpuset") or mounts.v2 or "/nonexistent"
    text = next((t for f in ("cpuset.effective_cpus", "cpuset.cpus.effective", "cpuset.cpus")
                 if (t := read_text(f"{root}/{f}")).strip()), "")
    cpus = parse_cpuset(text) if text.strip() else tuple(range(os.cpu_count() or 1))
    memory = next((int(line.split()[1]) * 1024 for line in read_text("/proc/meminfo")
                   .splitlines() if line.startswith("MemTotal:")), 0)
    apparmor = read_text("/sys/module/apparmor/parameters/enabled").strip() == "Y"
    return HostFacts(cpus, memory, frozenset(mounts.v1), apparmor)


def remove_cgroup_dirs(hierarchies: tuple[str, ...], relative: str, wait: float = 1.0) -> bool:
    """Remove ``relative`` and everything below it from each hierarchy, bottom-up; True if
    all is gone. A monitor that has just reported STOPPED may still sit in its
    ``lxc.pivot`` cgroup for a moment (EBUSY), so busy dirs are retried for ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        busy = False
        for root in hierarchies:
            for dirpath, _dirs, _files in os.walk(f"{root}/{relative}", topdown=False):
                try:
                    os.rmdir(dirpath)
                except OSError as exc:
                    busy = busy or exc.errno == errno.EBUSY
        if not busy or time.monotonic() >= deadline:
            return not busy
        time.sleep(0.02)


def remove_empty_parents(hierarchies: tuple[str, ...], relative: str) -> None:
    """rmdir each parent of ``relative`` that is empty, without descending into it."""
    parts = relative.split("/")
    for depth in range(len(parts) - 1, 0, -1):
        for root in hierarchies:
            with contextlib.suppress(OSError):
                os.rmdir(f"{root}/{'/'.join(parts[:depth])}")


def missing_controllers(mounts: CgroupMounts) -> list[str]:
    """The controllers containers need that neither v1 nor v2 offers (v2 freezes natively)."""
    v2 = set(read_text(f"{mounts.v2}/cgroup.controllers").split()) if mounts.v2 else set()
    return [c for c in ("memory", "pids", "cpuset", "freezer")
            if c not in mounts.v1 and c not in v2 and not (c == "freezer" and mounts.v2)]
