"""What a container volume shares with its image: the baseline of a move's pre-copy.

A volume made from a spare copy of its image's rootfs (``DirPool.create_from_template``)
keeps, in every file it has not changed since, the spare's inode and change time (ctime),
which is older than the moment the volume was made. ``.baseline`` in the volume directory
records that moment with the image and the uid shift, and ``.baseline-manifest`` (written
when the spare was made: ``storage/manifest.py``) every path of the spare with its kind,
inode and ctime. A member that moves the volume in can then start from a spare of its
own of the same image and shift (one rename) and receive only the paths that are not the
spare's any more (new, of another inode, changed since), instead of creating every file
of the rootfs again, which is slow where file creation is (~0.5 ms a file on this
machine's disk). The change time alone would not do: the files of a directory moved in
the container keep theirs, and the target's spare has them at the old path only.

Both records are the member's own: the moment is on its clock, the inodes are those of
its filesystem. A move never sends the manifest (``transfer.is_private``); the target
keeps its spare's and writes its own ``.baseline``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from node_agent.storage import manifest

BASELINE = ".baseline"
MANIFEST = ".baseline-manifest"
CLOCK_SLACK = 1.0  # s: a file changed just before the recorded moment is sent anyway


@dataclass(frozen=True)
class Baseline:
    image: str
    shift: str  # "privileged" or the uid shift, as the image store names templates
    since: float  # seconds since the epoch, on the clock of the member holding the volume

    def matches(self, image: str, shift: str) -> bool:
        return (self.image, self.shift) == (image, shift)


def shift_tag(uid_shift: int | None) -> str:
    return "privileged" if uid_shift is None else str(uid_shift)


def moment() -> float:
    """Now, less the slack: taken before a volume is made."""
    return time.time() - CLOCK_SLACK


def write_baseline(volume: Path, baseline: Baseline) -> None:
    (volume / BASELINE).write_text(json.dumps(baseline.__dict__))


def read_baseline(volume: Path) -> Baseline | None:
    try:
        doc = json.loads((volume / BASELINE).read_text())
        return Baseline(str(doc["image"]), str(doc["shift"]), float(doc["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_baseline(volume: Path) -> None:
    """A volume that arrived whole has only new files: a baseline it carried is void."""
    (volume / BASELINE).unlink(missing_ok=True)
    (volume / MANIFEST).unlink(missing_ok=True)


def write_baseline_manifest(volume: Path) -> None:
    """Record every path of a spare just made (``volume``, holding ``rootfs/``); the
    spare must not change until it is taken (blocking)."""
    data = manifest.encode(manifest.scan(volume))
    scratch = volume / (MANIFEST + ".new")
    scratch.write_bytes(data)
    scratch.rename(volume / MANIFEST)


def read_baseline_manifest(volume: Path) -> dict[bytes, tuple[int, int]] | None:
    """The spare's paths as ``write_baseline_manifest`` recorded them (paths relative to
    ``volume``); None if there is no readable record."""
    try:
        return manifest.decode((volume / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
