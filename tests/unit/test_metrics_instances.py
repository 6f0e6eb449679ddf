"""Instance samples to LXD's families (cluster/api/metrics/instances.py)."""

from __future__ import annotations

from cluster.api.metrics.instances import Measured, families
from cluster.api.metrics.render import render
from corral_shared.instance_metrics import FAMILIES, Sample, exposed_name, memory


def test_series_carry_lxds_instance_labels() -> None:
    text = render(families([
        Measured("c1", "container", [Sample("lxd_cpu_seconds", 2.5, {"mode": "user",
                                                                     "cpu": "0"}),
                                     memory("MemTotal", 1024), Sample("lxd_procs_total", 4)]),
        Measured("v1", "virtual-machine", [memory("MemTotal", 2048)]),
    ])).decode()
    assert ('lxd_cpu_seconds_total{cpu="0",mode="user",name="c1",project="default",'
            'type="container"} 2.5') in text
    assert 'lxd_memory_MemTotal_bytes{name="v1",project="default",type="virtual-machine"}' \
           ' 2048.0' in text
    assert "# TYPE lxd_memory_MemTotal_bytes gauge" in text
    assert "# TYPE lxd_procs_total gauge" in text


def test_a_figure_not_read_has_no_series() -> None:
    made = families([Measured("c1", "container", [memory("MemTotal", 1)])])
    assert [f.name for f in made] == ["lxd_memory_MemTotal_bytes"]
    assert families([]) == []


def test_exposed_names_are_lxds() -> None:
    names = {exposed_name(f) for f in FAMILIES}
    for expected in ("lxd_cpu_seconds_total", "lxd_cpu_effective_total",
                     "lxd_disk_read_bytes_total", "lxd_disk_reads_completed_total",
                     "lxd_disk_written_bytes_total", "lxd_disk_writes_completed_total",
                     "lxd_filesystem_avail_bytes", "lxd_filesystem_free_bytes",
                     "lxd_filesystem_size_bytes", "lxd_memory_MemTotal_bytes",
                     "lxd_memory_Active_anon_bytes", "lxd_memory_OOM_kills_total",
                     "lxd_network_receive_bytes_total", "lxd_network_transmit_errs_total",
                     "lxd_network_receive_drop_total", "lxd_network_transmit_packets_total",
                     "lxd_procs_total"):
        assert expected in names
    assert len([n for n in names if n.startswith("lxd_memory_")]) == 20
