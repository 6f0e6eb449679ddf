"""LXD's container metrics from cgroup and kernel files (node_agent.drivers.lxc_metrics).

The v1 texts were captured on a test host (kernel 6.18, cgroup v1 controllers); the v2 texts
follow the kernel's format (Documentation/admin-guide/cgroup-v2.rst), with values chosen so
every mapping is visible.
"""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from corral_shared.instance_metrics import FAMILIES, Sample
from node_agent.drivers.lxc_metrics import (
    Disk,
    IoCounts,
    MemoryReadings,
    cpu_count,
    cpu_samples_v1,
    cpu_samples_v2,
    disk_samples,
    filesystem_disks,
    filesystem_labels,
    filesystem_samples,
    memory_samples,
    mount_of,
    network_samples,
    parse_blkio_v1,
    parse_io_stat,
    parse_mountinfo,
    parse_partitions,
    parse_uevent,
    to_int,
)

GiB = 1024**3
# Labels LXD puts on each family's series (besides name, project and type, which the API adds).
LXD_LABELS = {"lxd_cpu_seconds": {"cpu", "mode"}, "lxd_disk_": {"device"},
              "lxd_filesystem_": {"device", "fstype", "mountpoint"}, "lxd_network_": {"device"}}

USAGE_ALL_V1 = """\
cpu user system
0 20000000 8000000
1 1500000000 0
"""
CPU_STAT_V2 = """\
usage_usec 33446
user_usec 23890
system_usec 9556
nice_usec 0
core_sched.force_idle_usec 0
nr_periods 0
nr_throttled 0
throttled_usec 0
"""
# memory.stat of a v1 cgroup with a child: the hierarchical total_* differ from its own.
MEMORY_STAT_V1 = """\
cache 11427840
rss 6000640
rss_huge 0
shmem 10551296
mapped_file 8826880
dirty 32768
writeback 0
swap 0
inactive_anon 0
active_anon 0
inactive_file 16384
active_file 860160
unevictable 16551936
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 794365952
total_rss 12918784
total_rss_huge 0
total_shmem 10551296
total_mapped_file 12320768
total_dirty 2052096
total_writeback 4096
total_swap 0
total_inactive_anon 6746112
total_active_anon 45056
total_inactive_file 491458560
total_active_file 292356096
total_unevictable 16551936
"""
MEMORY_STAT_V2 = """\
anon 5000000
file 300000000
kernel 2000000
shmem 1000000
file_mapped 7000000
file_dirty 8192
file_writeback 4096
anon_thp 0
inactive_anon 4000000
active_anon 1000000
inactive_file 200000000
active_file 100000000
unevictable 65536
slab_reclaimable 900000
slab_unreclaimable 300000
slab 1200000
pgfault 12345
"""
OOM_CONTROL_V1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
BLKIO_BYTES_V1 = """\
254:0 Read 1048576
254:0 Write 4096
254:0 Sync 1052672
254:0 Async 0
254:0 Discard 0
254:0 Total 1052672
7:3 Read 65536
7:3 Write 0
7:3 Total 65536
Total 1118208
"""
BLKIO_SERVICED_V1 = """\
254:0 Read 256
254:0 Write 1
254:0 Total 257
7:3 Read 16
Total 273
"""
IO_STAT_V2 = """\
259:0 rbytes=2097152 wbytes=8192 rios=64 wios=2 dbytes=4096 dios=1
7:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0
8:0 8:16 rbytes=512 wbytes=1024 rios=1 wios=1 dbytes=0 dios=0
"""
PARTITIONS = """\
major minor  #blocks  name

 254        0  268435456 vda
 259        0  500107608 nvme0n1
 259        1     524288 nvme0n1p1
   8       16  104857600 sdb
   7        0     102400 loop0
"""
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
  eth0:  123456     300    2    5    0     0          0         0    65432     200    1    4    0     0       0          0
"""  # noqa: E501
MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 22 0:40 / /var/lib/corral/pools/default rw,relatime shared:20 - btrfs /dev/loop3 rw,ssd
41 40 0:41 / /var/lib/corral/pools/default/containers/zc rw - zfs tank/containers/zc rw
50 22 7:4 / /srv/my\\040data rw,relatime - xfs /dev/loop4 rw
51 22 0:50 / /srv/shadowed rw - tmpfs tmpfs rw
52 22 0:51 / /srv/shadowed rw - ext3 /dev/sdb1 rw
"""


def values(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.family, tuple(sorted(s.labels.items()))): s.value for s in samples}


def labels_are_lxds(samples: list[Sample]) -> bool:
    for sample in samples:
        allowed = next((keys for prefix, keys in LXD_LABELS.items()
                        if sample.family.startswith(prefix)), set())
        if sample.family not in FAMILIES or not set(sample.labels) <= allowed:
            return False
    return True


# -- CPU ---------------------------------------------------------------------------------------


def test_cgroup_v1_cpu_seconds_are_per_cpu_user_and_system() -> None:
    samples = cpu_samples_v1(USAGE_ALL_V1)
    assert values(samples) == {
        ("lxd_cpu_seconds", (("cpu", "0"), ("mode", "system"))): 0.008,
        ("lxd_cpu_seconds", (("cpu", "0"), ("mode", "user"))): 0.02,
        ("lxd_cpu_seconds", (("cpu", "1"), ("mode", "system"))): 0.0,
        ("lxd_cpu_seconds", (("cpu", "1"), ("mode", "user"))): 1.5,
    }


def test_cgroup_v2_cpu_seconds_are_all_on_cpu_zero_as_lxd_reports_them() -> None:
    assert values(cpu_samples_v2(CPU_STAT_V2)) == {
        ("lxd_cpu_seconds", (("cpu", "0"), ("mode", "system"))): 0.009556,
        ("lxd_cpu_seconds", (("cpu", "0"), ("mode", "user"))): 0.02389,
    }


def test_missing_cpu_files_give_no_cpu_seconds() -> None:
    assert cpu_samples_v1("") == [] and cpu_samples_v2("") == []


def test_effective_cpus_count_every_cpu_of_the_set() -> None:
    assert cpu_count("0-1\n") == 2
    assert cpu_count("0-3,6,8-9") == 7
    assert cpu_count("") is None and cpu_count("bogus") is None


# -- memory ------------------------------------------------------------------------------------


def test_cgroup_v1_memory_uses_the_hierarchical_totals() -> None:
    readings = MemoryReadings(MEMORY_STAT_V1, v1=True, usage=900_000_000,
                              limit=9223372036854771712, swap=0, oom_kills=3)
    got = {s.family.removeprefix("lxd_memory_"): s.value
           for s in memory_samples(readings, host_total=8 * GiB)}
    assert got == {
        "Active_anon_bytes": 45056, "Active_file_bytes": 292356096,
        "Active_bytes": 45056 + 292356096,
        "Inactive_anon_bytes": 6746112, "Inactive_file_bytes": 491458560,
        "Inactive_bytes": 6746112 + 491458560,
        "Unevictable_bytes": 16551936, "Writeback_bytes": 4096, "Dirty_bytes": 2052096,
        "Mapped_bytes": 12320768, "RSS_bytes": 12918784, "Shmem_bytes": 10551296,
        "Cached_bytes": 794365952,
        # no limit (the v1 "unlimited" value exceeds the host): the host's memory
        "MemTotal_bytes": 8 * GiB,
        "MemFree_bytes": 8 * GiB - 900_000_000,
        "MemAvailable_bytes": 8 * GiB - 900_000_000 + 794365952,
        "Swap_bytes": 0, "OOM_kills": 3,
    }


def test_cgroup_v2_memory_maps_the_v2_names_and_has_no_rss() -> None:
    readings = MemoryReadings(MEMORY_STAT_V2, v1=False, usage=306_000_000, limit=GiB,
                              swap=12288, oom_kills=0)
    got = {s.family.removeprefix("lxd_memory_"): s.value
           for s in memory_samples(readings, host_total=8 * GiB)}
    assert got == {
        "Active_anon_bytes": 1000000, "Active_file_bytes": 100000000,
        "Active_bytes": 101000000,
        "Inactive_anon_bytes": 4000000, "Inactive_file_bytes": 200000000,
        "Inactive_bytes": 204000000,
        "Unevictable_bytes": 65536, "Writeback_bytes": 4096, "Dirty_bytes": 8192,
        "Mapped_bytes": 7000000, "Shmem_bytes": 1000000, "Cached_bytes": 300000000,
        "MemTotal_bytes": GiB,  # the limit
        "MemFree_bytes": GiB - 306_000_000,
        # free + page cache + reclaimable slab, as LXD (and /proc/meminfo) count it
        "MemAvailable_bytes": GiB - 306_000_000 + 300000000 + 900000,
        "Swap_bytes": 12288, "OOM_kills": 0,
    }


def test_memory_figures_that_cannot_be_read_are_left_out_not_zero() -> None:
    readings = MemoryReadings("", v1=False, usage=None, limit=None, swap=None, oom_kills=None)
    assert values(memory_samples(readings, host_total=8 * GiB)) == {
        ("lxd_memory_MemTotal_bytes", ()): 8 * GiB}


def test_a_limit_above_the_host_memory_reports_the_host_memory() -> None:
    readings = MemoryReadings("", v1=False, usage=GiB, limit=64 * GiB)
    got = values(memory_samples(readings, host_total=8 * GiB))
    assert got[("lxd_memory_MemTotal_bytes", ())] == 8 * GiB
    assert got[("lxd_memory_MemFree_bytes", ())] == 7 * GiB


def test_v1_swap_is_memsw_minus_memory_and_never_negative() -> None:
    readings = MemoryReadings("", v1=True, usage=GiB, limit=2 * GiB, swap=-4096)
    assert values(memory_samples(readings, 8 * GiB))[("lxd_memory_Swap_bytes", ())] == 0


def test_numbers_of_single_value_files() -> None:
    assert to_int("268435456\n") == 268435456
    assert to_int("max\n") is None and to_int("") is None and to_int("--5") is None


# -- disk --------------------------------------------------------------------------------------


def test_v1_blkio_counts_bytes_and_ios_per_device_without_loop_devices() -> None:
    counts = parse_blkio_v1(BLKIO_BYTES_V1, BLKIO_SERVICED_V1)
    assert counts == {"254:0": IoCounts(read_bytes=1048576, written_bytes=4096, reads=256,
                                        writes=1)}


def test_v2_io_stat_skips_loops_and_direct_io_and_names_a_line_by_its_last_device() -> None:
    counts = parse_io_stat(IO_STAT_V2)
    assert counts == {"259:0": IoCounts(2097152, 8192, 64, 2),
                      "8:16": IoCounts(512, 1024, 1, 1)}


def test_disk_samples_are_named_after_the_block_device() -> None:
    names = parse_partitions(PARTITIONS)
    assert names["259:1"] == "nvme0n1p1" and names["254:0"] == "vda"
    counts = {"254:0": IoCounts(1, 2, 3, 4), "250:9": IoCounts(5, 6, 7, 8)}  # 250:9 unknown
    assert values(disk_samples(counts, names)) == {
        ("lxd_disk_read_bytes", (("device", "vda"),)): 1,
        ("lxd_disk_written_bytes", (("device", "vda"),)): 2,
        ("lxd_disk_reads_completed", (("device", "vda"),)): 3,
        ("lxd_disk_writes_completed", (("device", "vda"),)): 4,
    }


def test_uevent_gives_the_device_name() -> None:
    text = "MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\nDISKSEQ=1\n"
    assert parse_uevent(text)["DEVNAME"] == "nvme0n1"


# -- network -----------------------------------------------------------------------------------


def test_network_counters_of_every_interface_loopback_included() -> None:
    got = values(network_samples(NET_DEV))
    eth0 = (("device", "eth0"),)
    assert {family for family, _ in got} == {f"lxd_network_{way}_{what}"
                                             for way in ("receive", "transmit")
                                             for what in ("bytes", "packets", "errs", "drop")}
    assert {labels for _, labels in got} == {eth0, (("device", "lo"),)}
    assert got[("lxd_network_receive_bytes", eth0)] == 123456
    assert got[("lxd_network_receive_packets", eth0)] == 300
    assert got[("lxd_network_receive_errs", eth0)] == 2
    assert got[("lxd_network_receive_drop", eth0)] == 5
    assert got[("lxd_network_transmit_bytes", eth0)] == 65432
    assert got[("lxd_network_transmit_packets", eth0)] == 200
    assert got[("lxd_network_transmit_errs", eth0)] == 1
    assert got[("lxd_network_transmit_drop", eth0)] == 4


# -- filesystem --------------------------------------------------------------------------------


def test_mountinfo_unescapes_paths_and_finds_the_mount_holding_a_path() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[4].mountpoint == "/srv/my data" and mounts[4].major_minor == "7:4"
    assert mount_of(mounts, "/var/lib/corral/pools/default/containers/c1/rootfs") == mounts[2]
    assert mount_of(mounts, "/var/lib/corral/pools/defaultx") == mounts[0]
    assert mount_of(mounts, "/srv/shadowed/x") == mounts[6]  # the later mount hides the first


def test_root_disk_on_a_pool_directory_has_lxds_empty_device() -> None:
    disks = filesystem_disks("/var/lib/corral/pools/default/containers/c1/rootfs", {})
    assert disks == [Disk("/", "/var/lib/corral/pools/default/containers/c1/rootfs",
                          "/var/lib/corral/pools/default/containers/c1")]
    labels = filesystem_labels(disks[0], parse_mountinfo(MOUNTINFO))
    assert labels == {"device": "", "fstype": "btrfs", "mountpoint": "/"}


def test_root_disk_on_a_mounted_volume_is_named_by_the_mount_source() -> None:
    [disk] = filesystem_disks("/var/lib/corral/pools/default/containers/zc/rootfs", {})
    assert filesystem_labels(disk, parse_mountinfo(MOUNTINFO)) == {
        "device": "tank/containers/zc", "fstype": "zfs", "mountpoint": "/"}


def test_host_path_disks_are_named_by_their_source_or_loop_backing_file() -> None:
    devices = {"data": {"type": "disk", "source": "/srv/my data", "path": "/data"},
               "logs": {"type": "disk", "source": "/var/log", "path": "/mnt/logs"},
               "root": {"type": "disk", "pool": "default", "path": "/"},
               "eth0": {"type": "nic", "nictype": "bridged", "parent": "br0"}}
    root, data, logs = filesystem_disks("/c1/rootfs", devices)
    assert (root.path, data.path, logs.path) == ("/", "/data", "/mnt/logs")
    mounts = parse_mountinfo(MOUNTINFO)
    backing = {"7:4": "/var/lib/images/data.img"}
    assert filesystem_labels(data, mounts, lambda dev: backing.get(dev, "")) == {
        "device": "/var/lib/images/data.img", "fstype": "xfs", "mountpoint": "/data"}
    assert filesystem_labels(data, mounts) == {  # not a loop: the mount's source
        "device": "/dev/loop4", "fstype": "xfs", "mountpoint": "/data"}
    assert filesystem_labels(logs, mounts) == {  # not a mountpoint: its source
        "device": "/var/log", "fstype": "ext4", "mountpoint": "/mnt/logs"}


def test_ext3_is_named_ext4_as_lxd_names_the_shared_magic() -> None:
    [disk] = filesystem_disks("/srv/shadowed/c1/rootfs", {})
    assert filesystem_labels(disk, parse_mountinfo(MOUNTINFO))["fstype"] == "ext4"


def test_filesystem_sizes_come_from_statvfs_in_fragment_units() -> None:
    stat = os.statvfs_result((4096, 1024, 1000, 600, 500, 0, 0, 0, 0, 255))
    labels = {"device": "", "fstype": "ext4", "mountpoint": "/"}
    assert values(filesystem_samples(labels, stat)) == {
        ("lxd_filesystem_size_bytes", tuple(sorted(labels.items()))): 1024 * 1000,
        ("lxd_filesystem_free_bytes", tuple(sorted(labels.items()))): 1024 * 600,
        ("lxd_filesystem_avail_bytes", tuple(sorted(labels.items()))): 1024 * 500,
    }


# -- vocabulary --------------------------------------------------------------------------------


def test_every_sample_is_an_lxd_family_with_lxds_labels() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    disks = filesystem_disks("/c1/rootfs", {"d": {"type": "disk", "source": "/srv",
                                                  "path": "/srv"}})
    stat = os.statvfs_result((4096, 4096, 10, 5, 5, 0, 0, 0, 0, 255))
    samples = [
        *cpu_samples_v1(USAGE_ALL_V1), *cpu_samples_v2(CPU_STAT_V2),
        Sample("lxd_cpu_effective_total", 2),
        *memory_samples(MemoryReadings(MEMORY_STAT_V1, True, 1, 2, 0, 0), GiB),
        *memory_samples(MemoryReadings(MEMORY_STAT_V2, False, 1, 2, 0, 0), GiB),
        *disk_samples(parse_blkio_v1(BLKIO_BYTES_V1, BLKIO_SERVICED_V1),
                      parse_partitions(PARTITIONS)),
        *disk_samples(parse_io_stat(IO_STAT_V2), parse_partitions(PARTITIONS)),
        *[s for d in disks for s in filesystem_samples(filesystem_labels(d, mounts), stat)],
        *network_samples(NET_DEV),
    ]
    assert len({s.family for s in samples}) >= 30
    assert labels_are_lxds(samples)


@given(st.text(alphabet=st.sampled_from("0123456789:= \nabcdefrwiosx_-²|"), max_size=400))
def test_parsers_never_raise_and_only_name_lxd_families(text: str) -> None:
    samples = [*cpu_samples_v1(text), *cpu_samples_v2(text), *network_samples(text),
               *memory_samples(MemoryReadings(text, True), GiB),
               *memory_samples(MemoryReadings(text, False), GiB),
               *disk_samples(parse_blkio_v1(text, text), parse_partitions(text)),
               *disk_samples(parse_io_stat(text), {})]
    cpu_count(text)
    parse_mountinfo(text)
    assert labels_are_lxds(samples)
