"""Which instance a volume on this member belongs to, and under which placement epoch it
was made here: a small file next to its rootfs, written when the agent creates the
instance (from its image or from an HA replica).

Neither the LXC config nor the pool records an instance's uid, and a name alone is not
enough: a member that comes back after a failover may find a copy of an instance whose
name now belongs to a record that lives elsewhere, or, after failing back, its own older
copy next to a newer replica. The owner file tells a stale copy from the current one.
A volume received by a move carries the uid in ``.received-for`` (``volume_moves``); a
volume from before the file existed has neither, and is known by name only.

Blocking (files); callers run these in worker threads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

OWNER = ".owner"
RECEIVED_FOR = ".received-for"  # volume_moves: the uid of the move that brought it
UNKNOWN_EPOCH = -1


class Layout(Protocol):
    def instance_path(self, name: str) -> Path: ...


@dataclass(frozen=True)
class Owner:
    uid: str
    epoch: int = UNKNOWN_EPOCH  # the instance's placement epoch when it was made here


def write_owner(pool: Layout, name: str, owner: Owner) -> None:
    """Record ``owner`` in volume ``name`` (replaced whole: write, fsync, rename)."""
    target = pool.instance_path(name) / OWNER
    scratch = target.with_name(f"{OWNER}.tmp")
    with scratch.open("w", encoding="utf-8") as handle:
        json.dump({"uid": owner.uid, "epoch": owner.epoch}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    scratch.replace(target)


def read_owner(pool: Layout, name: str) -> Owner | None:
    """The owner of volume ``name``, None when it says nothing (or cannot be read)."""
    directory = pool.instance_path(name)
    try:
        data = json.loads((directory / OWNER).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("uid"), str) and isinstance(
                data.get("epoch"), int):
            return Owner(data["uid"], data["epoch"])
    except (OSError, ValueError):
        pass
    try:
        uid = (directory / RECEIVED_FOR).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Owner(uid) if uid else None
