"""The backing file of a VM's qcow2 overlay: read from its header, repointed unsafely.

An overlay moved from another member (a cold move) still names the source member's copy
of the image, whose path differs here; both copies hold the same bytes (same image
fingerprint), so repointing the header (``qemu-img rebase -u``) is all it takes.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from node_agent.drivers.base import DriverError

_MAGIC = b"QFI\xfb"
_HEADER = struct.Struct(">4sIQI")  # magic, version, backing_file_offset, backing_file_size


def backing_file(disk: Path) -> str | None:
    """The backing file named in ``disk``'s header (None without one). Raises DriverError
    if ``disk`` is not a qcow2 image."""
    try:
        with open(disk, "rb") as handle:
            header = handle.read(_HEADER.size)
            if len(header) < _HEADER.size or header[:4] != _MAGIC:
                raise DriverError(f"{disk} is not a qcow2 image")
            _, _, offset, size = _HEADER.unpack(header)
            if not offset or not size:
                return None
            handle.seek(offset)
            return handle.read(size).decode(errors="surrogateescape")
    except OSError as exc:
        raise DriverError(f"cannot read {disk}: {exc}") from exc


def repoint(disk: Path, backing: Path) -> None:
    """Make ``disk`` name ``backing`` (same content, another path) if it names another."""
    if backing_file(disk) == str(backing):
        return
    try:
        done = subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(backing),
                               str(disk)], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"qemu-img rebase failed: {exc}") from exc
    if done.returncode != 0:
        raise DriverError(f"qemu-img rebase {disk} failed: {done.stderr.strip()}")
