"""The host's view of a VM's metrics: pure conversions of QMP answers and /proc text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corral_shared.instance_metrics import FAMILIES
from node_agent.drivers.qemu import host_metrics as hm

MiB = 1024**2
# /proc/<qemu>/task/<vcpu thread>/stat of a TCG vCPU thread (comm "CPU 0/TCG")
THREAD_STAT = ("4242 (CPU 0/TCG) S 1 4240 4240 0 -1 4194368 0 0 0 0 1234 56 0 0 20 0 3 0 "
               "99 0 0 18446744073709551615 0 0 0 0 0 0 0 4096 1 0 0 0 -1 1 0 0 0 0 0")


def test_each_vcpu_thread_counts_once_under_its_lowest_index() -> None:
    cpus = [{"cpu-index": 1, "thread-id": 11}, {"cpu-index": 0, "thread-id": 10},
            {"cpu-index": 3, "thread-id": 10}, {"cpu-index": 2}, "junk"]
    assert hm.vcpu_threads(cpus) == {10: "0", 11: "1"}
    assert hm.vcpu_threads({"error": "x"}) == {}


def test_a_thread_stat_gives_user_and_system_seconds() -> None:
    got = hm.thread_cpu_samples("0", THREAD_STAT, ticks=100)
    assert [(s.labels["mode"], s.value) for s in got] == [("user", 12.34), ("system", 0.56)]
    assert all(s.family == "lxd_cpu_seconds" and s.labels["cpu"] == "0" for s in got)
    assert hm.thread_cpu_samples("0", "") == []  # the thread is gone
    tricky = "7 (a) b) c) R " + " ".join(["0"] * 10) + " 5 6 0 0"
    assert [s.value for s in hm.thread_cpu_samples("1", tricky, ticks=1)] == [5, 6]


def test_memory_is_the_ram_and_what_qemu_has_not_made_resident() -> None:
    assert hm.guest_ram({"base-memory": 256 * MiB - 8192}) == 256 * MiB - 8192
    assert hm.guest_ram({"base-memory": 256 * MiB, "plugged-memory": MiB}) == 257 * MiB
    assert hm.guest_ram({}) == 0 and hm.guest_ram(None) == 0
    got = {s.family: s.value for s in hm.memory_samples(256 * MiB, 100 * MiB)}
    assert got == {"lxd_memory_MemTotal_bytes": 256 * MiB,
                   "lxd_memory_MemFree_bytes": 156 * MiB,
                   "lxd_memory_MemAvailable_bytes": 156 * MiB}
    only_total = hm.memory_samples(256 * MiB, 300 * MiB)  # TCG's cache: no estimate
    assert [s.family for s in only_total] == ["lxd_memory_MemTotal_bytes"]
    assert [s.family for s in hm.memory_samples(256 * MiB, 0)] == ["lxd_memory_MemTotal_bytes"]
    assert hm.memory_samples(0, 100) == []


def test_blockstats_are_per_drive_id() -> None:
    answer = [
        {"device": "root", "qdev": "/machine/peripheral/root-disk/virtio-backend",
         "stats": {"rd_bytes": 4096, "rd_operations": 2, "wr_bytes": 512,
                   "wr_operations": 1, "flush_operations": 9}},
        {"device": "", "qdev": "/machine/peripheral/x", "stats": {"rd_bytes": 1}},
        {"device": "", "qdev": "", "stats": {"rd_bytes": 1}},
        {"device": "y"},
    ]
    got = {(s.family, s.labels["device"]): s.value for s in hm.blockstats_samples(answer)}
    assert got == {("lxd_disk_read_bytes", "root"): 4096,
                   ("lxd_disk_reads_completed", "root"): 2,
                   ("lxd_disk_written_bytes", "root"): 512,
                   ("lxd_disk_writes_completed", "root"): 1,
                   ("lxd_disk_read_bytes", "/machine/peripheral/x"): 1}


def test_tap_counters_map_onto_lxds_network_families() -> None:
    counters = {key: index for index, key in enumerate(hm.TAP_COUNTERS)}
    got = {s.family: s.value for s in hm.tap_samples("eth0", counters)}
    assert got["lxd_network_receive_bytes"] == counters["bytes_received"]
    assert got["lxd_network_transmit_drop"] == counters["packets_dropped_outbound"]
    assert len(got) == 8 and set(got) <= set(FAMILIES)


@given(st.lists(st.dictionaries(st.sampled_from(["device", "qdev", "stats"]),
                                st.one_of(st.text(max_size=5), st.integers(),
                                          st.dictionaries(st.sampled_from(list(hm.BLOCK_STATS)),
                                                          st.integers(0, 10**12))))))
def test_any_blockstats_answer_gives_only_known_families(answer: list[dict[str, object]]) -> None:
    assert all(s.family in FAMILIES for s in hm.blockstats_samples(answer))
