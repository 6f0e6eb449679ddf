"""A VM's LXD metrics as its guest sees them: the script the corral agent runs for them,
and pure parsers of what it prints.

LXD's guest agent answers ``/1.0/metrics`` from the guest's own kernel files
(``lxd-agent/metrics.go`` in canonical/lxd). Corral's agent only runs commands (busybox
in the guest, see ``node_agent/images/vm_guest.py``), so one scrape is one exec of
:data:`SCRIPT`, which prints each file after a ``@@ <section>`` line::

    meminfo    /proc/meminfo     lxd_memory_*_bytes (LXD's fields, RSS and Swap derived)
    stat       /proc/stat        lxd_cpu_seconds{cpu,mode} (USER_HZ is 100 on Linux)
    diskstats  /proc/diskstats   lxd_disk_*{device} (sectors of 512 bytes)
    net/dev    /proc/net/dev     lxd_network_*{device}, every interface, lo too
    mounts     /proc/mounts      with statfs: lxd_filesystem_*{device,fstype,mountpoint}
    vmstat     /proc/vmstat      lxd_memory_OOM_kills (its oom_kill line only)
    statfs     stat -f           per mountpoint: fragment size, blocks, free, available
    cmdline    wc -c             lxd_procs_total: processes with a command line

Where corral departs from LXD's agent it reports what the family's help promises: Swap is
the swap in use (SwapTotal - SwapFree; LXD's agent sends SwapCached), the hugepage
figures are bytes (LXD's agent sends page counts), and a network interface's errors and
drops are the kernel's (LXD's agent leaves them 0). A section the guest could not print
yields no samples: a figure not read is left out, never reported as zero.
"""

from __future__ import annotations

import re

from corral_shared.instance_metrics import Sample, memory

SCRIPT = """\
set -f
for f in meminfo stat diskstats net/dev mounts; do
    echo "@@ $f"; cat "/proc/$f" 2>/dev/null
done
echo "@@ vmstat"; grep '^oom_kill ' /proc/vmstat 2>/dev/null
echo "@@ statfs"; stat -f -c '%S %b %f %a %n' $(cut -d ' ' -f 2 /proc/mounts) 2>/dev/null
set +f
echo "@@ cmdline"; wc -c /proc/[0-9]*/cmdline 2>/dev/null
exit 0
"""
ARGV = ["sh", "-c", SCRIPT]

USER_HZ = 100
SECTOR = 512
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# /proc/meminfo field -> LXD's memory field (the rest are derived or left out)
MEMINFO = {
    "Active": "Active", "Active(anon)": "Active_anon", "Active(file)": "Active_file",
    "Cached": "Cached", "Dirty": "Dirty", "Inactive": "Inactive",
    "Inactive(anon)": "Inactive_anon", "Inactive(file)": "Inactive_file",
    "Mapped": "Mapped", "MemAvailable": "MemAvailable", "MemFree": "MemFree",
    "MemTotal": "MemTotal", "Shmem": "Shmem", "Unevictable": "Unevictable",
    "Writeback": "Writeback",
}
# /proc/net/dev columns (after "name:") -> lxd_network_<way>_<what>
NET_COLUMNS = {0: "receive_bytes", 1: "receive_packets", 2: "receive_errs", 3: "receive_drop",
               8: "transmit_bytes", 9: "transmit_packets", 10: "transmit_errs",
               11: "transmit_drop"}
# Mounts LXD's agent leaves out: pseudo and read-only image filesystems, and what lies
# under /dev, /proc, /sys (and Docker's layers, as node_exporter does).
EXCLUDED_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "fusectl", "fuse.lxcfs", "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay",
    "proc", "procfs", "pstore", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs",
    "tracefs"})
EXCLUDED_MOUNTPOINTS = re.compile(r"^/(?:dev|proc|sys|var/lib/docker/.+)(?:$|/)")
_CMDLINE = re.compile(r"^\s*(\d+)\s+/proc/\d+/cmdline$")


def sections(output: str) -> dict[str, str]:
    """The script's output split at its ``@@ <name>`` lines: ``{name: text}``."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@@ "):
            current = found.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def guest_samples(output: str) -> list[Sample]:
    """All the samples in one run of :data:`SCRIPT`."""
    parts = sections(output)
    samples = memory_samples(parts.get("meminfo", ""))
    samples += oom_samples(parts.get("vmstat", ""))
    samples += cpu_samples(parts.get("stat", ""))
    samples += disk_samples(parts.get("diskstats", ""))
    samples += network_samples(parts.get("net/dev", ""))
    samples += filesystem_samples(parts.get("mounts", ""), parts.get("statfs", ""))
    samples += procs_samples(parts.get("cmdline"))
    return samples


def _meminfo(text: str) -> dict[str, int]:
    """``{field: value}``, kB values in bytes (HugePages_* are counts, left as they are)."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return values


def memory_samples(meminfo: str) -> list[Sample]:
    """lxd_memory_*_bytes from /proc/meminfo; RSS is MemTotal - MemAvailable (as LXD's
    agent has it), Swap the swap in use, Hugepages* the pages times Hugepagesize."""
    values = _meminfo(meminfo)
    samples = [memory(name, values[key]) for key, name in MEMINFO.items() if key in values]
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if total is not None and available is not None and total >= available:
        samples.append(memory("RSS", total - available))
    if "SwapTotal" in values and "SwapFree" in values:
        samples.append(memory("Swap", max(0, values["SwapTotal"] - values["SwapFree"])))
    if "Hugepagesize" in values:
        for key, name in (("HugePages_Total", "HugepagesTotal"),
                          ("HugePages_Free", "HugepagesFree")):
            if key in values:
                samples.append(memory(name, values[key] * values["Hugepagesize"]))
    return samples


def oom_samples(vmstat: str) -> list[Sample]:
    """lxd_memory_OOM_kills from /proc/vmstat's oom_kill (kernels since 4.13)."""
    for line in vmstat.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "oom_kill" and fields[1].isdigit():
            return [Sample("lxd_memory_OOM_kills", float(fields[1]))]
    return []


def cpu_samples(stat: str) -> list[Sample]:
    """lxd_cpu_seconds{cpu="N", mode} per CPU line of /proc/stat (not the "cpu" total,
    as LXD)."""
    samples = []
    for line in stat.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or not fields[0][3:].isdigit():
            continue
        ticks = fields[1:1 + len(CPU_MODES)]
        if len(ticks) < len(CPU_MODES) or not all(t.isdigit() for t in ticks):
            continue
        cpu = fields[0][3:]
        samples += [Sample("lxd_cpu_seconds", int(t) / USER_HZ, {"cpu": cpu, "mode": mode})
                    for mode, t in zip(CPU_MODES, ticks, strict=True)]
    return samples


def disk_samples(diskstats: str) -> list[Sample]:
    """lxd_disk_* per line of /proc/diskstats (every device, partitions too, as LXD)."""
    samples = []
    for line in diskstats.splitlines():
        fields = line.split()
        if len(fields) < 10 or not all(fields[i].isdigit() for i in (3, 5, 7, 9)):
            continue
        labels = {"device": fields[2]}
        samples += [
            Sample("lxd_disk_reads_completed", float(fields[3]), labels),
            Sample("lxd_disk_read_bytes", float(int(fields[5]) * SECTOR), labels),
            Sample("lxd_disk_writes_completed", float(fields[7]), labels),
            Sample("lxd_disk_written_bytes", float(int(fields[9]) * SECTOR), labels)]
    return samples


def network_samples(net_dev: str) -> list[Sample]:
    """lxd_network_* per interface of /proc/net/dev (its two header lines have no
    counters)."""
    samples = []
    for line in net_dev.splitlines():
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if not colon or len(fields) < 16 or not all(f.isdigit() for f in fields[:16]):
            continue
        labels = {"device": name.strip()}
        samples += [Sample(f"lxd_network_{what}", float(fields[column]), labels)
                    for column, what in NET_COLUMNS.items()]
    return samples


def _statfs(text: str) -> dict[str, tuple[int, int, int, int]]:
    """``{mountpoint: (fragment size, blocks, free, available)}`` from ``stat -f``."""
    found = {}
    for line in text.splitlines():
        fields = line.split(maxsplit=4)
        if len(fields) == 5 and all(f.isdigit() for f in fields[:4]):
            size, blocks, free, avail = (int(f) for f in fields[:4])
            found[fields[4]] = (size, blocks, free, avail)
    return found


def filesystem_samples(mounts: str, statfs: str) -> list[Sample]:
    """lxd_filesystem_* per mount that LXD's agent keeps and ``stat -f`` answered for.
    Of mounts stacked on one mountpoint only the top one counts: it is what statfs sees."""
    stats = _statfs(statfs)
    top: dict[str, tuple[str, str]] = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mountpoint, fstype = fields[:3]
        top.pop(mountpoint, None)  # keeps the top one last, in mount order
        top[mountpoint] = (device, fstype)
    samples = []
    for mountpoint, (device, fstype) in top.items():
        if (fstype in EXCLUDED_FSTYPES or EXCLUDED_MOUNTPOINTS.match(mountpoint)
                or mountpoint not in stats):
            continue
        size, blocks, free, avail = stats[mountpoint]
        labels = {"device": device, "fstype": fstype, "mountpoint": mountpoint}
        samples += [Sample("lxd_filesystem_size_bytes", float(blocks * size), labels),
                    Sample("lxd_filesystem_free_bytes", float(free * size), labels),
                    Sample("lxd_filesystem_avail_bytes", float(avail * size), labels)]
    return samples


def procs_samples(cmdline_counts: str | None) -> list[Sample]:
    """lxd_procs_total: the processes whose command line is not empty (kernel threads'
    is), as LXD's agent counts them, from ``wc -c /proc/[0-9]*/cmdline``; none if the
    section is missing or lists no process at all."""
    if cmdline_counts is None:
        return []
    listed = [int(m.group(1)) for line in cmdline_counts.splitlines()
              if (m := _CMDLINE.match(line))]
    if not listed:
        return []
    return [Sample("lxd_procs_total", float(sum(1 for size in listed if size > 0)))]
