"""What this host offers the scheduler: CPUs, memory and the default pool's disk."""

from __future__ import annotations

import os
from pathlib import Path


def memory_total() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def host_capacity(pool_path: Path | None) -> dict[str, float]:
    """``{"cpu", "memory", "disk"}`` as reported in heartbeats (disk: the pool's
    filesystem size; 0 when the pool is not there yet)."""
    disk = 0
    if pool_path is not None:
        try:
            stat = os.statvfs(pool_path)
            disk = stat.f_blocks * stat.f_frsize
        except OSError:
            disk = 0
    return {"cpu": float(os.cpu_count() or 1), "memory": float(memory_total()),
            "disk": float(disk)}
