"""LXD's instance metrics of a running container, from its cgroup and kernel files.

::

    cgroup (v1 or v2, per controller) --> cpu, memory, disk, processes  \\
    /proc/<init>/net/dev -------------> network                          >--> [Sample]
    statvfs + /proc/self/mountinfo ---> filesystem (root disk, host-path disks)  /

The figures and their labels are the ones LXD's container driver reports (``Metrics``,
``getFSStats`` in ``lxd/instance/drivers/driver_lxc.go`` and the readers in
``lxd/cgroup/abstraction.go`` of canonical/lxd): per-CPU user/system seconds on cgroup v1
(``cpuacct.usage_all``) and a single ``cpu="0"`` on v2, which has no per-CPU split; the
hierarchical ``total_*`` memory.stat fields on v1 and the v2 names mapped onto them (v2 has
no RSS, so LXD reports none); disk devices named from ``/proc/partitions`` without loop
devices; every interface of the container's network namespace, ``lo`` included. Where LXD
reports a zero for a figure it could not read, corral leaves the figure out.

The parsers are pure and unit-tested with captured file contents; the readers only read
kernel files (no fork) and never go through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from corral_shared.instance_metrics import Sample, memory
from node_agent.drivers.lxc_config import ConfigError, parse_cpuset
from node_agent.drivers.lxc_state import CgroupMounts, parse_net_dev, payload_pids, read_text

NS_PER_S = 1_000_000_000
LOOP_MAJOR = "7"  # LXD leaves loop devices out of the disk metrics

# memory.stat field -> LXD's memory metric; v1 uses the hierarchical totals.
V1_MEMORY = {"total_active_anon": "Active_anon", "total_active_file": "Active_file",
             "total_inactive_anon": "Inactive_anon", "total_inactive_file": "Inactive_file",
             "total_unevictable": "Unevictable", "total_writeback": "Writeback",
             "total_dirty": "Dirty", "total_mapped_file": "Mapped", "total_rss": "RSS",
             "total_shmem": "Shmem", "total_cache": "Cached"}
V2_MEMORY = {"active_anon": "Active_anon", "active_file": "Active_file",
             "inactive_anon": "Inactive_anon", "inactive_file": "Inactive_file",
             "unevictable": "Unevictable", "file_writeback": "Writeback",
             "file_dirty": "Dirty", "file_mapped": "Mapped", "shmem": "Shmem",
             "file": "Cached"}

# statfs magic names LXD knows (``FSTypeToName``); ext2/3/4 share one magic, as do NFS 3/4.
LXD_FSTYPES = {"btrfs": "btrfs", "tmpfs": "tmpfs", "ext2": "ext4", "ext3": "ext4",
               "ext4": "ext4", "xfs": "xfs", "nfs": "nfs", "nfs4": "nfs", "zfs": "zfs"}


# -- pure parsers ------------------------------------------------------------------------------


def to_int(text: str) -> int | None:
    """A kernel file's single number, or None (absent, ``max``, or garbage)."""
    try:
        return int(text)
    except ValueError:
        return None


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, cpu.stat, oom_control)."""
    result: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if (number := to_int(value)) is not None:
            result[key] = number
    return result


def cpu_samples_v1(usage_all: str) -> list[Sample]:
    """Per-CPU user and system seconds from cgroup v1 ``cpuacct.usage_all`` (ns)."""
    samples: list[Sample] = []
    for line in usage_all.splitlines():
        cols = line.split()
        if len(cols) != 3 or not all(col.isdecimal() for col in cols):
            continue  # the "cpu user system" header
        cpu, user, system = cols
        samples += [Sample("lxd_cpu_seconds", int(system) / NS_PER_S,
                           {"cpu": cpu, "mode": "system"}),
                    Sample("lxd_cpu_seconds", int(user) / NS_PER_S, {"cpu": cpu, "mode": "user"})]
    return samples


def cpu_samples_v2(cpu_stat: str) -> list[Sample]:
    """User and system seconds from cgroup v2 ``cpu.stat`` (us), as LXD reports them: all
    on ``cpu="0"``, since v2 does not split them per CPU."""
    stat = parse_keyed(cpu_stat)
    return [Sample("lxd_cpu_seconds", stat[key] / 1_000_000, {"cpu": "0", "mode": mode})
            for mode, key in (("system", "system_usec"), ("user", "user_usec")) if key in stat]


def cpu_count(cpuset: str) -> int | None:
    """How many CPUs a cpuset list (``0-3,6``) names; None if it is not one."""
    try:
        return len(parse_cpuset(cpuset)) if cpuset.strip() else None
    except ConfigError:
        return None


@dataclass(frozen=True)
class MemoryReadings:
    """What the memory controller shows of one cgroup; None where a file is missing."""

    stat: str
    v1: bool
    usage: int | None = None
    limit: int | None = None  # None when unlimited (v2 ``max``) or unreadable
    swap: int | None = None  # already net of memory usage on v1 (memsw - usage)
    oom_kills: int | None = None


def memory_samples(readings: MemoryReadings, host_total: int) -> list[Sample]:
    """LXD's memory metrics: memory.stat fields, MemTotal (the limit, or the host's memory
    when there is none or it is larger), MemFree = total - usage, MemAvailable = MemFree +
    page cache + reclaimable slab, Swap and the OOM kill count."""
    stat = parse_keyed(readings.stat)
    table = V1_MEMORY if readings.v1 else V2_MEMORY
    fields = {name: stat[key] for key, name in table.items() if key in stat}
    for both, parts in (("Active", ("Active_anon", "Active_file")),
                        ("Inactive", ("Inactive_anon", "Inactive_file"))):
        if all(part in fields for part in parts):
            fields[both] = sum(fields[part] for part in parts)
    slab = stat.get("total_slab_reclaimable" if readings.v1 else "slab_reclaimable", 0)
    limit = readings.limit
    total = limit if limit is not None and 0 < limit <= host_total else host_total
    if total > 0:
        fields["MemTotal"] = total
        if readings.usage is not None:
            fields["MemFree"] = total - readings.usage
            fields["MemAvailable"] = total - readings.usage + fields.get("Cached", 0) + slab
    if readings.swap is not None:
        fields["Swap"] = max(0, readings.swap)
    samples = [memory(name, value) for name, value in sorted(fields.items())]
    if readings.oom_kills is not None:
        samples.append(Sample("lxd_memory_OOM_kills", readings.oom_kills))
    return samples


def parse_partitions(text: str) -> dict[str, str]:
    """``major:minor`` -> block device name, from ``/proc/partitions``."""
    names: dict[str, str] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0].isdecimal() and cols[1].isdecimal():
            names[f"{cols[0]}:{cols[1]}"] = cols[3]
    return names


@dataclass
class IoCounts:
    read_bytes: int = 0
    written_bytes: int = 0
    reads: int = 0
    writes: int = 0


def parse_blkio_v1(service_bytes: str, serviced: str) -> dict[str, IoCounts]:
    """Per ``major:minor`` counts from v1 ``blkio.throttle.io_service_bytes_recursive`` and
    ``io_serviced_recursive`` (``8:0 Read 4096`` lines); loop devices left out."""
    counts: dict[str, IoCounts] = {}
    for text, read_field, write_field in ((service_bytes, "read_bytes", "written_bytes"),
                                          (serviced, "reads", "writes")):
        for line in text.splitlines():
            cols = line.split()
            if len(cols) != 3 or ":" not in cols[0] or not cols[2].isdecimal():
                continue
            if cols[0].split(":")[0] == LOOP_MAJOR:
                continue
            entry = counts.setdefault(cols[0], IoCounts())
            if cols[1] in ("Read", "Write"):
                setattr(entry, read_field if cols[1] == "Read" else write_field, int(cols[2]))
    return counts


def parse_io_stat(text: str) -> dict[str, IoCounts]:
    """Per ``major:minor`` counts from v2 ``io.stat`` (``8:0 rbytes=.. wbytes=.. rios=..
    wios=.. dbytes=.. dios=..``); loop devices left out. When a line holds several device
    ids (a kernel bug LXD works around), the last one names it."""
    keys = {"rbytes": "read_bytes", "wbytes": "written_bytes", "rios": "reads",
            "wios": "writes"}
    counts: dict[str, IoCounts] = {}
    for line in text.splitlines():
        device, entry = "", IoCounts()
        for part in line.split():
            name, sep, value = part.partition("=")
            if not sep:
                device = part if ":" in part else device
            elif name in keys and value.isdecimal():
                setattr(entry, keys[name], int(value))
        if device and device.split(":")[0] != LOOP_MAJOR:
            counts[device] = entry
    return counts


def parse_uevent(text: str) -> dict[str, str]:
    """``KEY=value`` lines of a sysfs ``uevent`` file."""
    return {key: value for key, _, value in (line.partition("=") for line in text.splitlines())
            if value}


def disk_samples(counts: Mapping[str, IoCounts], names: Mapping[str, str]) -> list[Sample]:
    """LXD's disk metrics, one ``device`` label per block device name; a device whose name
    is unknown is left out."""
    samples: list[Sample] = []
    for device_id, entry in sorted(counts.items()):
        if not (name := names.get(device_id)):
            continue
        labels = {"device": name}
        samples += [Sample("lxd_disk_read_bytes", entry.read_bytes, labels),
                    Sample("lxd_disk_reads_completed", entry.reads, labels),
                    Sample("lxd_disk_written_bytes", entry.written_bytes, labels),
                    Sample("lxd_disk_writes_completed", entry.writes, labels)]
    return samples


NET_COUNTERS = (("receive_bytes", "bytes_received"), ("receive_packets", "packets_received"),
                ("receive_errs", "errors_received"), ("receive_drop", "packets_dropped_inbound"),
                ("transmit_bytes", "bytes_sent"), ("transmit_packets", "packets_sent"),
                ("transmit_errs", "errors_sent"), ("transmit_drop", "packets_dropped_outbound"))


def network_samples(net_dev: str) -> list[Sample]:
    """LXD's network metrics for every interface of the container (``lo`` too, as LXD)."""
    return [Sample(f"lxd_network_{family}", counts[key], {"device": iface})
            for iface, counts in sorted(parse_net_dev(net_dev).items())
            for family, key in NET_COUNTERS]


@dataclass(frozen=True)
class Mount:
    major_minor: str
    mountpoint: str
    fstype: str
    source: str


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def parse_mountinfo(text: str) -> list[Mount]:
    """Every mount of ``/proc/self/mountinfo``, in order (a later one hides an earlier one
    on the same mountpoint)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) >= 5 and len(rest) >= 2:
            mounts.append(Mount(fields[2], _unescape(fields[4]), rest[0], _unescape(rest[1])))
    return mounts


def mount_of(mounts: Iterable[Mount], path: str) -> Mount | None:
    """The mount that holds ``path`` (an absolute path without symlinks): the longest
    mountpoint above it, the last one mounted there if several are."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mountpoint.rstrip("/") + "/"
        if (path + "/").startswith(point) and (
                best is None or len(mount.mountpoint) >= len(best.mountpoint)):
            best = mount
    return best


def lxd_fstype(kernel_name: str) -> str:
    """The ``fstype`` label LXD gives a filesystem (named from its statfs magic). LXD labels
    any other filesystem with its magic number in hex; corral gives the kernel's name."""
    return LXD_FSTYPES.get(kernel_name, kernel_name)


@dataclass(frozen=True)
class Disk:
    """A filesystem disk of a container: its path inside, its host path, the directory LXD
    looks up as a mount to name the device (a root disk's volume, the parent of its rootfs
    in LXD's layout and corral's pools; a host-path disk's source), and its ``source``
    (empty for the root disk, which lives on a pool)."""

    path: str
    host_path: str
    volume: str
    source: str = ""


def filesystem_disks(rootfs: str, devices: Mapping[str, Mapping[str, str]]) -> list[Disk]:
    """The root disk (if ``rootfs`` is known) and every host-path disk device."""
    disks = [Disk("/", rootfs, os.path.dirname(rootfs.rstrip("/")))] if rootfs else []
    for _name, dev in sorted(devices.items()):
        source, path = dev.get("source", ""), dev.get("path", "")
        if dev.get("type") == "disk" and path not in ("", "/") and source.startswith("/"):
            disks.append(Disk(path, source, source, source))
    return disks


def filesystem_labels(disk: Disk, mounts: list[Mount],
                      backing_file: Callable[[str], str] = lambda _device: "") -> dict[str, str]:
    """LXD's labels of one disk. ``device``: the source of the mount at the disk's volume
    (for a host-path disk on a loop device, the loop's backing file, which
    ``backing_file(major:minor)`` gives), else the disk's ``source``. ``fstype``: the
    filesystem that holds it. ``mountpoint``: its path inside the container."""
    own = next((m for m in reversed(mounts) if m.mountpoint == disk.volume), None)
    device = disk.source
    if own is not None:
        device = (disk.source and backing_file(own.major_minor)) or own.source
    labels = {"device": device, "mountpoint": disk.path}
    if (holder := mount_of(mounts, disk.host_path)) is not None:
        labels["fstype"] = lxd_fstype(holder.fstype)
    return labels


def filesystem_samples(labels: dict[str, str], stat: os.statvfs_result) -> list[Sample]:
    """Size, available and free bytes of one disk (blocks count in ``f_frsize`` units)."""
    unit = stat.f_frsize or stat.f_bsize
    return [Sample("lxd_filesystem_size_bytes", stat.f_blocks * unit, labels),
            Sample("lxd_filesystem_avail_bytes", stat.f_bavail * unit, labels),
            Sample("lxd_filesystem_free_bytes", stat.f_bfree * unit, labels)]


# -- cheap readers (plain reads of kernel files) -----------------------------------------------


def _controller_dir(mounts: CgroupMounts, controller: str, payload: str) -> tuple[str, bool]:
    """The payload's directory for ``controller`` and whether it is on cgroup v1 (files of
    a v2 controller that is not enabled are simply absent)."""
    if controller in mounts.v1:
        return f"{mounts.v1[controller]}/{payload}/", True
    return (f"{mounts.v2}/{payload}/" if mounts.v2 else "/nonexistent/"), False


def read_memory(mounts: CgroupMounts, payload: str) -> MemoryReadings:
    base, v1 = _controller_dir(mounts, "memory", payload)
    if v1:
        usage = to_int(read_text(base + "memory.usage_in_bytes"))
        memsw = to_int(read_text(base + "memory.memsw.usage_in_bytes"))
        swap = memsw - usage if memsw is not None and usage is not None else None
        oom = parse_keyed(read_text(base + "memory.oom_control")).get("oom_kill")
        return MemoryReadings(read_text(base + "memory.stat"), True, usage,
                              to_int(read_text(base + "memory.limit_in_bytes")), swap, oom)
    return MemoryReadings(read_text(base + "memory.stat"), False,
                          to_int(read_text(base + "memory.current")),
                          to_int(read_text(base + "memory.max")),
                          to_int(read_text(base + "memory.swap.current")),
                          parse_keyed(read_text(base + "memory.events")).get("oom_kill"))


def read_cpu(mounts: CgroupMounts, payload: str) -> list[Sample]:
    if "cpuacct" in mounts.v1:
        return cpu_samples_v1(read_text(f"{mounts.v1['cpuacct']}/{payload}/cpuacct.usage_all"))
    return cpu_samples_v2(read_text(f"{mounts.v2}/{payload}/cpu.stat")) if mounts.v2 else []


def read_effective_cpus(mounts: CgroupMounts, payload: str, host_cpus: int) -> list[Sample]:
    """The payload's effective cpuset; the host's CPUs when no cpuset controller exists
    (nothing restricts the container then); nothing when the file cannot be read."""
    base, v1 = _controller_dir(mounts, "cpuset", payload)
    count = cpu_count(read_text(base + ("cpuset.effective_cpus" if v1 else
                                        "cpuset.cpus.effective")))
    if count is None and not v1 and not (mounts.v2 and "cpuset" in read_text(
            f"{mounts.v2}/cgroup.controllers").split()):
        count = host_cpus
    return [] if count is None else [Sample("lxd_cpu_effective_total", count)]


def read_disks(mounts: CgroupMounts, payload: str) -> list[Sample]:
    base, v1 = _controller_dir(mounts, "blkio", payload)
    counts = (parse_blkio_v1(read_text(base + "blkio.throttle.io_service_bytes_recursive"),
                             read_text(base + "blkio.throttle.io_serviced_recursive"))
              if v1 else parse_io_stat(read_text(base + "io.stat")))
    if not counts:
        return []
    names = parse_partitions(read_text("/proc/partitions"))
    for device_id in counts.keys() - names.keys():  # rare: ask sysfs for the odd one out
        uevent = parse_uevent(read_text(f"/sys/dev/block/{device_id}/uevent"))
        if name := uevent.get("DEVNAME"):
            names[device_id] = name
    return disk_samples(counts, names)


def read_processes(mounts: CgroupMounts, payload: str) -> list[Sample]:
    """``pids.current``, or the processes of the cgroup when there is no pids controller
    (LXD counts them then too); nothing when the cgroup is gone."""
    base, _ = _controller_dir(mounts, "pids", payload)
    count = to_int(read_text(base + "pids.current"))
    if count is None:
        count = len(payload_pids(mounts, payload)) or None
    return [] if count is None else [Sample("lxd_procs_total", count)]


def _loop_backing_file(major_minor: str) -> str:
    text = read_text(f"/sys/dev/block/{major_minor}/loop/backing_file").strip()
    return text.removesuffix(" (deleted)")


def read_filesystems(disks: list[Disk]) -> list[Sample]:
    """statvfs of each disk's host path; a disk that cannot be stat'ed is left out."""
    mounts = parse_mountinfo(read_text("/proc/self/mountinfo"))
    samples: list[Sample] = []
    for disk in disks:
        resolved = Disk(disk.path, os.path.realpath(disk.host_path),
                        os.path.realpath(disk.volume), disk.source)
        try:
            stat = os.statvfs(resolved.host_path)
        except OSError:
            continue
        labels = filesystem_labels(resolved, mounts, _loop_backing_file)
        samples += filesystem_samples(labels, stat)
    return samples


def container_samples(mounts: CgroupMounts, payload: str, pid: int, host_memory: int,
                      host_cpus: int, disks: list[Disk]) -> list[Sample]:
    """Every metric of a running container: ``payload`` is its cgroup below each
    hierarchy's root, ``pid`` its init on the host."""
    return [*read_cpu(mounts, payload),
            *read_effective_cpus(mounts, payload, host_cpus),
            *memory_samples(read_memory(mounts, payload), host_memory),
            *read_disks(mounts, payload),
            *read_filesystems(disks),
            *network_samples(read_text(f"/proc/{pid}/net/dev")),
            *read_processes(mounts, payload)]
