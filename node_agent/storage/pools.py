"""The storage pool drivers by name, and the checks of a pool's config before anything is
made (``corral init --storage-backend``).

``open_pool`` blocks (it may format and mount a loop file); ``config_problem`` only stats
and probes the tools.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from node_agent.storage import btrfs_cli
from node_agent.storage.base import StoragePool
from node_agent.storage.btrfs import BtrfsPool
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError
from node_agent.storage.sizes import parse_size

DRIVERS = ("dir", "btrfs")
MIN_BTRFS_SIZE = 256 << 20  # mkfs.btrfs refuses less than ~114 MiB; leave room for data
_KEYS = {"dir": {"source"}, "btrfs": {"source", "size"}}


def open_pool(name: str, driver: str, config: dict[str, str], default_path: Path,
              disks: Path) -> StoragePool:
    """The pool, ready (``ensure``): at ``config["source"]`` or ``default_path``; a btrfs
    loop file goes in ``disks``. StorageError (400) for an unknown driver."""
    pool: StoragePool
    if driver == "dir":
        source = config.get("source")
        pool = DirPool(name, Path(source) if source else default_path)
    elif driver == "btrfs":
        pool = BtrfsPool(name, default_path, config, disks)
    else:
        raise StorageError(f"Unknown storage pool driver {driver!r}", code=400)
    pool.ensure()
    return pool


def config_problem(driver: str, config: dict[str, str]) -> str:
    """Why a pool of ``driver`` with ``config`` cannot be made here, or ``""``."""
    if driver not in DRIVERS:
        return f"Unknown storage pool driver {driver!r} (supported: {', '.join(DRIVERS)})"
    unknown = sorted(set(config) - _KEYS[driver])
    if unknown:
        return f"Invalid {driver} storage pool config key {unknown[0]!r}"
    if driver == "dir":
        return ""
    problem = btrfs_cli.problem()
    if problem:
        return f"Cannot use the btrfs storage driver: {problem}"
    source = config.get("source", "")
    if source and config.get("size"):
        return "A btrfs pool takes either a source or a size (of a new loop file), not both"
    if config.get("size"):
        try:
            size = parse_size(config["size"])
        except ValueError as exc:
            return str(exc)
        if size < MIN_BTRFS_SIZE:
            return f"Size {config['size']!r} is too small for a btrfs pool (at least 256MiB)"
    if source:
        return _source_problem(Path(source))
    return ""


def _source_problem(source: Path) -> str:
    if not source.is_absolute():
        return f"Storage source {str(source)!r} must be an absolute path"
    try:
        mode = os.stat(source).st_mode
    except OSError as exc:
        return f"Storage source {str(source)!r}: {exc.strerror}"
    if stat.S_ISBLK(mode):
        return ""
    if stat.S_ISDIR(mode) and btrfs_cli.is_btrfs(source):
        return ""
    return (f"Storage source {str(source)!r} must be a block device or a directory on a "
            "btrfs filesystem")
