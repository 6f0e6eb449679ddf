"""qcow2 files of VM replicas on a holder: checking what arrived, chaining a delta onto
its parent, and folding a chain into one file (blocking: ``qemu-img``).

A delta snapshot's disk names its parent's as backing file by a relative path,
``../<parent>/root.qcow2``: snapshots are sibling directories, so the path means the same
from the scratch directory a stream is received into (also a sibling) as from the
snapshot's place. ``flatten`` makes a snapshot's disk whole without copying the disk:

1. ``qemu-img commit -d -b ROOT DISK`` writes every cluster allocated above the chain's
   root ``ROOT`` into it. Reads through ``DISK`` never reach ROOT for those clusters, so
   every snapshot above ROOT reads the same before, during and after (``-d``: DISK is
   not emptied); ROOT itself (the oldest snapshot, being dropped) does not.
2. A hard link to ROOT replaces ``DISK`` (one rename): the disk is now ROOT's file,
   whole, and reads as before. Newer snapshots whose chain passes through ``DISK``
   read it by path and see the same bytes.

The cost is the size of the deltas above ROOT, not of the disk. A crash at any point
leaves every snapshot that is still listed readable, and ``flatten`` can simply run
again.

A disk that becomes a VM's (``allocate_zeroes``) gets an explicit zero cluster wherever
it has none: an unallocated cluster reads as zeroes only while the file has no backing
file, and a live migration's target is an overlay on the image, filled by a mirror of
the allocated clusters only. Errors: StorageError (BadStream for a received file that is
no plain qcow2).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError
from node_agent.drivers.qemu.qcow2 import backing_file
from node_agent.replication.errors import BadStream
from node_agent.storage.errors import StorageError

DISK = "root.qcow2"  # as node_agent.drivers.qemu.cmdline.DISK
FLAT = ".flat.qcow2"
QEMU_IMG_TIMEOUT = 1800.0
MAX_CHAIN = 64


def parent_path(parent: str) -> str:
    """The backing file name a delta on snapshot ``parent`` records."""
    return f"../{parent}/{DISK}"


def qemu_img(argv: list[str], doing: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"{doing}: {exc}") from exc
    if done.returncode != 0:
        raise StorageError(f"{doing}: {done.stderr.strip()[-2000:] or done.returncode}")
    return done.stdout


def info(disk: Path) -> dict[str, Any]:
    """``qemu-img info`` of the qcow2 file alone (its backing file is not opened)."""
    out = qemu_img(["qemu-img", "info", "-f", "qcow2", "--output=json", str(disk)],
               f"reading {disk}")
    try:
        found = json.loads(out)
    except ValueError as exc:
        raise StorageError(f"qemu-img info {disk}: {exc}") from exc
    if not isinstance(found, dict):
        raise StorageError(f"qemu-img info {disk}: unexpected output")
    return found


def virtual_size(disk: Path) -> int:
    return int(info(disk)["virtual-size"])


def adopt(disk: Path, parent: str | None, size: int | None) -> None:
    """Make a received disk a replica: a plain qcow2 (no external data file), of
    ``size`` bytes if given (its parent's), backed by snapshot ``parent``'s disk (or by
    nothing: the whole disk) whatever its header said, and consistent. BadStream if it
    is not such a file."""
    try:
        found = info(disk)
    except StorageError as exc:
        raise BadStream(f"the received disk is no qcow2 image: {exc}") from exc
    specific = (found.get("format-specific") or {}).get("data") or {}
    if found.get("format") != "qcow2" or specific.get("data-file"):
        raise BadStream("the received disk is not a plain qcow2 image")
    if size is not None and found.get("virtual-size") != size:
        raise BadStream(f"the received delta is of {found.get('virtual-size')} bytes, its "
                        f"parent of {size}")
    set_backing(disk, None)  # nothing the sender named is ever opened
    check(disk)
    if parent is not None:
        set_backing(disk, parent_path(parent))


def set_backing(disk: Path, backing: str | None) -> None:
    """Write ``backing`` (a qcow2 file's path, relative to ``disk``'s directory; None:
    none) into ``disk``'s header without touching its clusters."""
    qemu_img(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", backing or "",
          *(["-F", "qcow2"] if backing else []), str(disk)], f"rebasing {disk}")


def check(disk: Path) -> None:
    """``qemu-img check``: BadStream if the metadata is damaged."""
    try:
        qemu_img(["qemu-img", "check", "-q", "-f", "qcow2", str(disk)], f"checking {disk}")
    except StorageError as exc:
        raise BadStream(f"the received disk is damaged: {exc}") from exc


def chain(disk: Path, within: Path) -> list[Path]:
    """The backing files below ``disk``, nearest first; each must lie in a directory
    right under ``within`` (a replica's siblings), else StorageError."""
    found: list[Path] = []
    at = disk
    while True:
        try:
            name = backing_file(at)
        except DriverError as exc:
            raise StorageError(str(exc)) from exc
        if name is None:
            return found
        below = Path(os.path.normpath(at.parent / name))
        if below.parent.parent != within or len(found) >= MAX_CHAIN:
            raise StorageError(f"{disk}: unexpected backing file {name!r}")
        found.append(below)
        at = below


def flatten(disk: Path, within: Path) -> bool:
    """Make ``disk`` whole (see the module docstring); whether it had a backing file."""
    below = chain(disk, within)
    if not below:
        return False
    root = below[-1]
    qemu_img(["qemu-img", "commit", "-q", "-d", "-f", "qcow2", "-b", str(root), str(disk)],
         f"committing {disk} into {root}")
    flat = disk.with_name(FLAT)
    try:
        flat.unlink(missing_ok=True)
        os.link(root, flat)
        os.replace(flat, disk)
    except OSError as exc:
        raise StorageError(f"making {disk} whole: {exc}") from exc
    return True


ZERO_WRITES_PER_RUN = 512


def allocate_zeroes(disk: Path) -> int:
    """Mark every unallocated range of ``disk`` (which has no backing file: they read as
    zeroes) as zero clusters, so that it reads the same over any backing file; the
    number of ranges marked. Metadata only: no data is written."""
    out = qemu_img(["qemu-img", "map", "-f", "qcow2", "--output=json", str(disk)],
                   f"mapping {disk}")
    try:
        ranges = [(int(r["start"]), int(r["length"])) for r in json.loads(out)
                  if not r.get("present")]
    except (ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"qemu-img map {disk}: unexpected output: {exc}") from exc
    for at in range(0, len(ranges), ZERO_WRITES_PER_RUN):
        commands = [arg for start, length in ranges[at:at + ZERO_WRITES_PER_RUN]
                    for arg in ("-c", f"write -z {start} {length}")]
        qemu_img(["qemu-io", "-f", "qcow2", *commands, str(disk)], f"zeroing {disk}")
    return len(ranges)
