"""The HA instances fencing killed on this member, counted for ``/1.0/metrics``
(``corral_ha_fenced_instances_total``).

Two killers: the daemon's own check (``FenceGuard._enforce``) and the watchdog process,
which records each kill in ``fencing/fenced.json`` (the newest ``RECORDS_KEPT``). Both
may kill the same process, so a kill is known by its process, ``(pid, start time)``, and
counts once. The count covers what this daemon saw since it started: its own kills, and
the watchdog's recorded in this boot from the daemon's start on (read after each
heartbeat, when the file changed). A kill while no daemon ran is in the watchdog's log
and ``fenced.json``, not in the count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from node_agent.fencing.lease_file import Listed

Key = tuple[int, int]  # (pid, start time)


class FenceKills:
    """Kills seen since ``since`` (CLOCK_MONOTONIC, system-wide within boot ``boot``)."""

    def __init__(self, boot: str, since: float) -> None:
        self.boot, self.since = boot, since
        self._seen: set[Key] = set()
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file read

    @property
    def count(self) -> int:
        return len(self._seen)

    def killed(self, listed: Iterable[Listed]) -> None:
        """The daemon killed these processes."""
        self._seen.update((item.pid, item.starttime) for item in listed)

    def recorded(self, records: Iterable[Any]) -> None:
        """The watchdog's records (``fenced.json``): those of this boot from ``since`` on
        count; malformed ones are skipped."""
        for record in records:
            if not isinstance(record, dict) or record.get("boot_id") != self.boot:
                continue
            pid, start, at = (record.get(k) for k in ("pid", "starttime", "killed_at"))
            if isinstance(pid, int) and isinstance(start, int) and \
                    isinstance(at, int | float) and at >= self.since:
                self._seen.add((pid, start))

    def read(self, path: Path) -> None:
        """Read the watchdog's records if the file changed since the last read
        (blocking; a missing or torn file is left for the next read)."""
        try:
            info = path.stat()
        except OSError:
            return
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        self._stamp = stamp
        if isinstance(records, list):
            self.recorded(records)
