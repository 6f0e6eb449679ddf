"""Names of replica snapshots, and which of them to keep (pure).

A snapshot is named ``r<20-digit ns>``: the moment the source began reading the volume,
so names sort by age. On a dir pool the moment of a delta's parent is also when the
source's clock says the changes it sends began; on btrfs it is the name of the source's
read-only replication snapshot, which ``btrfs receive`` keeps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

KEEP_SENT = 3  # replication snapshots (btrfs) or manifests (dir) a source keeps per instance
KEEP_RECEIVED = 2  # complete snapshots a holder keeps per instance
_NAME = re.compile(r"r[0-9]{20}\Z")


def snapshot_name(ns: int) -> str:
    if not 0 <= ns < 10**20:
        raise ValueError(f"moment {ns} does not fit a snapshot name")
    return f"r{ns:020d}"


def is_snapshot_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.match(name) is not None


def moment_ns(name: str) -> int:
    """The moment a snapshot name encodes. ValueError for anything else."""
    if not is_snapshot_name(name):
        raise ValueError(f"{name!r} is not a replica snapshot name")
    return int(name[1:])


def next_snapshot_name(now_ns: int, existing: Iterable[str] = ()) -> str:
    """The name for a snapshot taken at ``now_ns``, later than every ``existing`` one even
    if the clock stepped back (a name older than its parent would be dropped as old)."""
    latest = max((moment_ns(n) for n in existing if is_snapshot_name(n)), default=-1)
    return snapshot_name(max(now_ns, latest + 1))


def new_snapshot_name(existing: Iterable[str] = ()) -> str:
    """A name for a snapshot begun now (``time.time_ns``): for a caller that must tell the
    holder the name before the stream starts (``volumes.send_replica(snapshot=...)``)."""
    return next_snapshot_name(time.time_ns(), existing)


def to_drop(names: Iterable[str], keep: int, also_keep: Iterable[str | None] = ()) -> list[str]:
    """The snapshot names to delete so that the newest ``keep`` and ``also_keep`` stay,
    oldest first. Other names (not snapshot names) are never dropped."""
    ordered = sorted(n for n in set(names) if is_snapshot_name(n))
    kept = set(ordered[-keep:] if keep > 0 else []) | {n for n in also_keep if n}
    return [n for n in ordered if n not in kept]
