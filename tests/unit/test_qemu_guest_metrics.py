"""The guest-side metric parsers on output captured from the busybox VM (TCG, one vCPU,
256 MiB; long sections cut short), and on hand-made variations of it."""

from __future__ import annotations

import subprocess

from hypothesis import given
from hypothesis import strategies as st

from corral_shared.instance_metrics import FAMILIES, Sample
from node_agent.drivers.qemu import guest_metrics as gm

CAPTURED = """\
@@ meminfo
MemTotal:         222600 kB
MemFree:          190508 kB
MemAvailable:     193868 kB
Buffers:              16 kB
Cached:             2648 kB
SwapCached:            0 kB
Active:             2648 kB
Inactive:            504 kB
Active(anon):       2640 kB
Inactive(anon):      500 kB
Active(file):          8 kB
Inactive(file):        4 kB
Unevictable:           0 kB
Mlocked:               0 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:                 0 kB
Writeback:             0 kB
AnonPages:           532 kB
Mapped:             1784 kB
Shmem:              2648 kB
SReclaimable:       9168 kB
VmallocTotal:   13743895347199 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap1G:           0 kB
@@ stat
cpu  8 0 187 0 0 0 1 0 0 0
cpu0 8 0 188 0 0 0 1 0 0 0
intr 635 114 9 0 0 22 0 0 0 1 0 0 0 3
ctxt 1385
btime 1796676006
processes 141
procs_running 4
procs_blocked 0
softirq 463 0 158 0 3 0 0 1 0 0 301
@@ diskstats
 254       0 vda 7 1 22 7 1 0 2 7 0 12 20 0 0 0 0 1 5
@@ net/dev
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0:    1186      13    0    0    0     0          0         0      342       1    0    0    0     0       0          0
@@ mounts
rootfs / rootfs rw,size=106416k,nr_inodes=26604,inode64 0 0
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=106416k,nr_inodes=26604,mode=755,inode64 0 0
devpts /dev/pts devpts rw,relatime,mode=600,ptmxmode=000 0 0
/dev/vda /mnt/root ext4 rw,relatime 0 0
@@ vmstat
oom_kill 0
@@ statfs
4096 26604 25939 25939 /
4096 0 0 0 /proc
4096 0 0 0 /sys
4096 26604 26604 26604 /dev
4096 0 0 0 /dev/pts
1024 56037 56022 51436 /mnt/root
@@ cmdline
       11 /proc/1/cmdline
        0 /proc/10/cmdline
        0 /proc/100/cmdline
       91 /proc/104/cmdline
       41 /proc/106/cmdline
        9 /proc/109/cmdline
        0 /proc/11/cmdline
       31 /proc/111/cmdline
       24 /proc/119/cmdline
      283 /proc/136/cmdline
      302 /proc/138/cmdline
        0 /proc/2/cmdline
      792 total
"""  # noqa: E501 (the captured /proc/net/dev is as wide as the kernel prints it)
KiB = 1024


def values(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(family, sorted labels): value}``; a series twice would be a bug."""
    found = {(s.family, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert len(found) == len(samples)
    return found


def test_the_captured_guest_gives_lxds_figures() -> None:
    got = values(gm.guest_samples(CAPTURED))
    assert all(family in FAMILIES for family, _ in got)
    assert got[("lxd_memory_MemTotal_bytes", ())] == 222600 * KiB
    assert got[("lxd_memory_Active_anon_bytes", ())] == 2640 * KiB
    assert got[("lxd_memory_RSS_bytes", ())] == (222600 - 193868) * KiB
    assert got[("lxd_memory_Swap_bytes", ())] == 0
    assert got[("lxd_memory_HugepagesTotal_bytes", ())] == 0
    assert got[("lxd_memory_OOM_kills", ())] == 0
    assert got[("lxd_cpu_seconds", (("cpu", "0"), ("mode", "system")))] == 1.88
    assert got[("lxd_cpu_seconds", (("cpu", "0"), ("mode", "softirq")))] == 0.01
    assert len([k for k in got if k[0] == "lxd_cpu_seconds"]) == 8  # cpu0 only, not "cpu"
    vda = (("device", "vda"),)
    assert got[("lxd_disk_reads_completed", vda)] == 7
    assert got[("lxd_disk_read_bytes", vda)] == 22 * 512
    assert got[("lxd_disk_writes_completed", vda)] == 1
    assert got[("lxd_disk_written_bytes", vda)] == 2 * 512
    eth0 = (("device", "eth0"),)
    assert got[("lxd_network_receive_bytes", eth0)] == 1186
    assert got[("lxd_network_transmit_packets", eth0)] == 1
    assert ("lxd_network_receive_bytes", (("device", "lo"),)) in got
    root = (("device", "/dev/vda"), ("fstype", "ext4"), ("mountpoint", "/mnt/root"))
    assert got[("lxd_filesystem_size_bytes", root)] == 56037 * 1024
    assert got[("lxd_filesystem_avail_bytes", root)] == 51436 * 1024
    mountpoints = {dict(k[1])["mountpoint"] for k in got if k[0] == "lxd_filesystem_free_bytes"}
    assert mountpoints == {"/", "/mnt/root"}  # /proc, /sys, /dev and pseudo types left out
    assert got[("lxd_procs_total", ())] == 8  # kernel threads have no command line


def test_missing_sections_leave_their_families_out() -> None:
    only_memory = CAPTURED.split("@@ stat")[0]
    families = {s.family for s in gm.guest_samples(only_memory)}
    assert families and all(f.startswith("lxd_memory_") for f in families)
    assert "lxd_memory_OOM_kills" not in families
    assert gm.guest_samples("") == []
    assert gm.procs_samples(None) == [] and gm.procs_samples("") == []
    assert gm.filesystem_samples("/dev/vda /mnt ext4 rw 0 0", "") == []  # stat failed


def test_swap_in_use_and_hugepages_are_bytes() -> None:
    meminfo = ("MemTotal: 1000 kB\nMemAvailable: 1200 kB\nSwapTotal: 500 kB\n"
               "SwapFree: 100 kB\nSwapCached: 7 kB\nHugePages_Total: 4\nHugePages_Free: 1\n"
               "Hugepagesize: 2048 kB\n")
    got = values(gm.memory_samples(meminfo))
    assert got[("lxd_memory_Swap_bytes", ())] == 400 * KiB
    assert got[("lxd_memory_HugepagesTotal_bytes", ())] == 4 * 2048 * KiB
    assert got[("lxd_memory_HugepagesFree_bytes", ())] == 2048 * KiB
    assert ("lxd_memory_RSS_bytes", ()) not in got  # available above total: not derived


def test_the_top_mount_of_a_stacked_mountpoint_counts() -> None:
    mounts = ("/dev/vda /data ext4 rw 0 0\ntmpfs /data tmpfs rw 0 0\n"
              "/dev/vdb /var/lib/docker/overlay2/x xfs rw 0 0\n"
              "/dev/vdc /srv\\040x btrfs rw 0 0\n")
    statfs = "4096 10 5 4 /data\n4096 10 5 4 /var/lib/docker/overlay2/x\n"
    got = values(gm.filesystem_samples(mounts, statfs))
    assert set(got) == {(f"lxd_filesystem_{what}_bytes",
                         (("device", "tmpfs"), ("fstype", "tmpfs"), ("mountpoint", "/data")))
                        for what in ("size", "free", "avail")}


def test_malformed_lines_are_skipped() -> None:
    assert gm.cpu_samples("cpu0 1 2 3\ncpux 1 2 3 4 5 6 7 8\ncpu1 1 2 3 4 5 6 7 -8") == []
    assert gm.disk_samples(" 8 0 sda 1 2 3\n 8 0 sdb a b c d e f g h i j") == []
    assert gm.network_samples("eth0: 1 2 3\nface |bytes packets") == []
    assert gm.memory_samples("MemTotal:\nMemFree: lots kB") == []
    assert gm.oom_samples("oom_kill\noom_kill x") == []


def test_the_script_runs_under_busybox_and_parses() -> None:
    """The script is busybox sh; this host's busybox runs it as the guest's does."""
    done = subprocess.run(["busybox", *gm.ARGV], capture_output=True, text=True, timeout=60,
                          check=True)
    families = {s.family for s in gm.guest_samples(done.stdout)}
    assert {"lxd_memory_MemTotal_bytes", "lxd_cpu_seconds", "lxd_procs_total",
            "lxd_network_receive_bytes", "lxd_memory_OOM_kills"} <= families


@given(st.text())
def test_any_output_gives_only_known_families(text: str) -> None:
    assert all(s.family in FAMILIES for s in gm.guest_samples(text))


@given(st.lists(st.sampled_from(CAPTURED.splitlines()), max_size=80))
def test_shuffled_captured_lines_never_raise(lines: list[str]) -> None:
    assert all(s.family in FAMILIES for s in gm.guest_samples("\n".join(lines)))
