"""The host id range that unprivileged containers map their root onto.

liblxc sets up user namespaces with ``newuidmap``/``newgidmap`` whenever they are installed,
and those refuse any range that ``/etc/subuid`` / ``/etc/subgid`` does not grant to the
caller (``root``). So the node agent reserves a range for ``root`` once, at start-up, as LXD
does (``root:1000000:1000000000``), and every container maps ``0 -> base``.

Choice (as LXD without ``security.idmap.isolated``): all containers share one map and map
the *whole* reserved range, so ids above 65535 inside an image (nested containers, some
NSS setups) still resolve. Images are shifted by ``base`` (container uid N is host uid
base+N); the size of the map does not change what an image must look like on disk.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

MIN_IDS = 65536
DEFAULT_BASE = 1_000_000
DEFAULT_COUNT = 1_000_000_000
_ROOT_NAMES = ("root", "0")


@dataclass(frozen=True)
class IdMap:
    """Container id 0 maps to host ``*_base``; ``*_count`` ids are mapped."""

    uid_base: int
    uid_count: int
    gid_base: int
    gid_count: int


class IdMapError(Exception):
    """/etc/subuid or /etc/subgid cannot be read or extended."""


def parse_subid(text: str, users: tuple[str, ...] = _ROOT_NAMES) -> list[tuple[int, int]]:
    """The ``(start, count)`` ranges granted to any of ``users``, in file order.

    Malformed lines are skipped, as ``newuidmap`` does.
    """
    ranges: list[tuple[int, int]] = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in users:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            ranges.append((start, count))
    return ranges


def pick_range(ranges: list[tuple[int, int]], minimum: int = MIN_IDS) -> tuple[int, int] | None:
    """The first range with at least ``minimum`` ids (the one a restarted agent picks again)."""
    for start, count in ranges:
        if count >= minimum:
            return start, count
    return None


def _ensure_one(path: Path, base: int, count: int) -> tuple[int, int]:
    """Find root's range in ``path``, appending ``root:base:count`` under a lock if absent."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise IdMapError(f"cannot open {path}: {exc}") from exc
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        # Two agents on one host may start at once: serialise read-check-append.
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        found = pick_range(parse_subid(text))
        if found is not None:
            return found
        prefix = "" if not text or text.endswith("\n") else "\n"
        handle.write(f"{prefix}root:{base}:{count}\n")
        handle.flush()
        os.fsync(handle.fileno())
        return base, count


def ensure_root_idmap(subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid"),
                      base: int = DEFAULT_BASE, count: int = DEFAULT_COUNT) -> IdMap:
    """Root's id map for unprivileged containers, reserving ``base:count`` if none exists.

    Uses the first ``root`` range of at least 65536 ids in each file. Raises
    :class:`IdMapError` if a file cannot be read or written.
    """
    uid_base, uid_count = _ensure_one(subuid, base, count)
    gid_base, gid_count = _ensure_one(subgid, base, count)
    return IdMap(uid_base, uid_count, gid_base, gid_count)
