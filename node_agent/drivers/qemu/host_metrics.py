"""A running VM's LXD metrics as the host sees them, for when its guest agent does not
answer (an image without one, a guest still booting, a frozen VM, an agent busy with a
long exec).

LXD falls back the same way when lxd-agent is unreachable (``getQemuMetrics`` in
canonical/lxd's ``lxd/instance/drivers/driver_qemu_metrics.go``)::

    lxd_cpu_seconds{cpu,mode=user|system}   each vCPU thread's times (QMP query-cpus-fast)
    lxd_memory_MemTotal_bytes               the guest's RAM (QMP query-memory-size-summary)
    lxd_memory_Mem{Free,Available}_bytes    that RAM less QEMU's resident set
    lxd_disk_*{device}                      QMP query-blockstats, per drive
    lxd_network_*{device}                   the taps' counters, receive and send swapped

Memory, processes and filesystems inside the guest cannot be seen from here and are left
out. One departure from LXD: a vCPU thread's user time keeps the time it ran the guest
(KVM's guest_time, which LXD subtracts), so a busy KVM guest is not shown idle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from corral_shared.instance_metrics import Sample, memory
from node_agent.drivers.base import DriverError
from node_agent.drivers.lxc_state import read_text
from node_agent.drivers.qemu import host
from node_agent.drivers.qemu.cmdline import Nic

Qmp = Callable[[str, dict[str, Any]], Any]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# host.tap_network's counters (already the guest's view) -> lxd_network_<way>_<what>
TAP_COUNTERS = {
    "bytes_received": "receive_bytes", "packets_received": "receive_packets",
    "errors_received": "receive_errs", "packets_dropped_inbound": "receive_drop",
    "bytes_sent": "transmit_bytes", "packets_sent": "transmit_packets",
    "errors_sent": "transmit_errs", "packets_dropped_outbound": "transmit_drop",
}
BLOCK_STATS = {"rd_operations": "lxd_disk_reads_completed", "rd_bytes": "lxd_disk_read_bytes",
               "wr_operations": "lxd_disk_writes_completed",
               "wr_bytes": "lxd_disk_written_bytes"}


def host_samples(qmp: Qmp, pid: int, nics: Iterable[Nic]) -> list[Sample]:
    """What the host can tell of the VM whose QEMU is ``pid``; a part whose QMP command
    or file fails is left out."""
    samples: list[Sample] = []
    try:
        for thread, cpu in vcpu_threads(qmp("query-cpus-fast", {})).items():
            samples += thread_cpu_samples(cpu, read_text(f"/proc/{pid}/task/{thread}/stat"))
    except DriverError:
        pass
    try:
        ram = guest_ram(qmp("query-memory-size-summary", {}))
        samples += memory_samples(ram, host.memory(pid)["usage"])
    except DriverError:
        pass
    try:
        samples += blockstats_samples(qmp("query-blockstats", {}))
    except DriverError:
        pass
    for nic in nics:
        if host.link_exists(nic.tap):
            counters = host.tap_network(nic.device, nic.tap, nic.hwaddr)["counters"]
            if host.link_exists(nic.tap):  # not removed while it was read
                samples += tap_samples(nic.device, counters)
    return samples


def vcpu_threads(cpus: Any) -> dict[int, str]:
    """``{host thread id: cpu label}`` from query-cpus-fast. A thread that runs several
    vCPUs (single-threaded TCG) is counted once, under the lowest of their indexes."""
    threads: dict[int, int] = {}
    for cpu in cpus if isinstance(cpus, list) else []:
        if not isinstance(cpu, dict):
            continue
        thread, index = cpu.get("thread-id"), cpu.get("cpu-index")
        if isinstance(thread, int) and isinstance(index, int) and thread > 0:
            threads[thread] = min(index, threads.get(thread, index))
    return {thread: str(index) for thread, index in sorted(threads.items(),
                                                             key=lambda item: item[1])}


def thread_cpu_samples(cpu: str, stat: str, ticks: int = CLOCK_TICKS) -> list[Sample]:
    """lxd_cpu_seconds{cpu, mode=user|system} from a thread's /proc stat line (none if
    the thread is gone)."""
    fields = stat.rpartition(")")[2].split()  # fields[0] is the state, the 3rd field
    if len(fields) < 13 or not (fields[11].isdigit() and fields[12].isdigit()):
        return []
    return [Sample("lxd_cpu_seconds", int(fields[11]) / ticks, {"cpu": cpu, "mode": "user"}),
            Sample("lxd_cpu_seconds", int(fields[12]) / ticks, {"cpu": cpu, "mode": "system"})]


def guest_ram(summary: Any) -> int:
    """The guest's RAM in bytes from query-memory-size-summary (base plus hotplugged)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("base-memory"), int):
        return 0
    plugged = summary.get("plugged-memory")
    return int(summary["base-memory"]) + (plugged if isinstance(plugged, int) else 0)


def memory_samples(ram: int, rss: int) -> list[Sample]:
    """MemTotal, and (as LXD estimates them) MemFree and MemAvailable as the RAM QEMU has
    not made resident; those two are left out when the resident set is unknown or
    exceeds the RAM (QEMU's own memory, TCG's translation cache)."""
    if ram <= 0:
        return []
    samples = [memory("MemTotal", ram)]
    if 0 < rss < ram:
        samples += [memory("MemFree", ram - rss), memory("MemAvailable", ram - rss)]
    return samples


def blockstats_samples(stats: Any) -> list[Sample]:
    """lxd_disk_* per drive of query-blockstats, labelled with the drive's id ("root")
    or, for a drive without one, its device's QOM path."""
    samples = []
    for entry in stats if isinstance(stats, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("stats"), dict):
            continue
        device = entry.get("device") or entry.get("qdev")
        if not isinstance(device, str) or not device:
            continue
        samples += [Sample(family, float(entry["stats"][key]), {"device": device})
                    for key, family in BLOCK_STATS.items()
                    if isinstance(entry["stats"].get(key), int)]
    return samples


def tap_samples(device: str, counters: dict[str, int]) -> list[Sample]:
    """lxd_network_*{device} from a NIC's counters as ``host.tap_network`` gives them."""
    return [Sample(f"lxd_network_{what}", float(counters[key]), {"device": device})
            for key, what in TAP_COUNTERS.items() if key in counters]
