"""LXD's instance metrics: their families (names, types, help) and the plain sample drivers
hand to the API.

Dashboards and alerts built on LXD must work on corral unchanged, so the names, types and
labels are LXD's (``lxd/metrics/types.go`` and ``doc/reference/provided_metrics.md`` in
canonical/lxd). A driver returns ``Sample``s for one running instance, with the
per-series labels only (``cpu``/``mode``, ``device``, ``fstype``/``mountpoint``); the API
adds ``name``, ``project`` and ``type``. A figure a driver cannot read is left out, never
reported as zero. Counter families are named as ``prometheus_client`` names them, without
the ``_total`` its exposition appends (``lxd_cpu_seconds`` is served as
``lxd_cpu_seconds_total``); ``lxd_cpu_effective_total`` and ``lxd_procs_total`` are
gauges whose names end in ``_total`` in LXD, kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COUNTER, GAUGE = "counter", "gauge"
INSTANCE_LABELS = ("name", "project", "type")


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    help: str


@dataclass(frozen=True)
class Sample:
    """One series of one instance: ``family`` is a key of ``FAMILIES``."""

    family: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


_MEMORY = {
    "Active_anon": "The amount of anonymous memory on active LRU list.",
    "Active_file": "The amount of file-backed memory on active LRU list.",
    "Active": "The amount of memory on active LRU list.",
    "Cached": "The amount of cached memory.",
    "Dirty": "The amount of memory waiting to get written back to the disk.",
    "HugepagesFree": "The amount of free memory for hugetlb.",
    "HugepagesTotal": "The amount of used memory for hugetlb.",
    "Inactive_anon": "The amount of anonymous memory on inactive LRU list.",
    "Inactive_file": "The amount of file-backed memory on inactive LRU list.",
    "Inactive": "The amount of memory on inactive LRU list.",
    "Mapped": "The amount of mapped memory.",
    "MemAvailable": "The amount of available memory.",
    "MemFree": "The amount of free memory.",
    "MemTotal": "The amount of used memory.",
    "RSS": "The amount of anonymous and swap cache memory.",
    "Shmem": "The amount of cached filesystem data that is swap-backed.",
    "Swap": "The amount of used swap memory.",
    "Unevictable": "The amount of unevictable memory.",
    "Writeback": "The amount of memory queued for syncing to disk.",
}
MEMORY_FIELDS = tuple(_MEMORY)  # lxd_memory_<field>_bytes

_NETWORK = {"bytes": "bytes", "drop": "dropped bytes", "errs": "errors",
            "packets": "packets"}

_ALL = [
    Family("lxd_cpu_seconds", COUNTER, "The total number of CPU time used in seconds."),
    Family("lxd_cpu_effective_total", GAUGE, "The total number of effective CPUs."),
    Family("lxd_disk_read_bytes", COUNTER, "The total number of bytes read."),
    Family("lxd_disk_reads_completed", COUNTER, "The total number of completed reads."),
    Family("lxd_disk_written_bytes", COUNTER, "The total number of bytes written."),
    Family("lxd_disk_writes_completed", COUNTER, "The total number of completed writes."),
    Family("lxd_filesystem_avail_bytes", GAUGE, "The number of available space in bytes."),
    Family("lxd_filesystem_free_bytes", GAUGE, "The number of free space in bytes."),
    Family("lxd_filesystem_size_bytes", GAUGE, "The size of the filesystem in bytes."),
    *[Family(f"lxd_memory_{name}_bytes", GAUGE, text) for name, text in _MEMORY.items()],
    Family("lxd_memory_OOM_kills", COUNTER, "The number of out of memory kills."),
    *[Family(f"lxd_network_{way}_{what}", COUNTER,
             f"The amount of {'received' if way == 'receive' else 'transmitted'} {text} "
             f"on a given interface.")
      for way in ("receive", "transmit") for what, text in _NETWORK.items()],
    Family("lxd_procs_total", GAUGE, "The number of running processes."),
]
FAMILIES: dict[str, Family] = {f.name: f for f in _ALL}


def exposed_name(family: str) -> str:
    """The name a family's samples carry on the wire (counters gain ``_total``)."""
    return family + "_total" if FAMILIES[family].type == COUNTER else family


def memory(field_name: str, value: float) -> Sample:
    """``lxd_memory_<field>_bytes``; ``field_name`` is one of ``MEMORY_FIELDS``."""
    if field_name not in _MEMORY:
        raise KeyError(f"not one of LXD's memory metrics: {field_name}")
    return Sample(f"lxd_memory_{field_name}_bytes", value)
