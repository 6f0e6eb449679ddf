"""What each pool kind's replica store offers ``volumes`` (``dir.DirReplicas``,
``btrfs.BtrfsReplicas``), and what a send reports.

``volumes`` reads and writes the stream's frames and checks its header; a store only
makes its payload and applies it. Sync methods block (callers run them in threads).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node_agent.replication.framing import FrameWriter, Header


@dataclass(frozen=True)
class ReplicaSent:
    snapshot: str  # the new snapshot's name: the parent to name in the next send
    bytes: int  # the whole stream, header and frames
    full: bool  # the whole volume (no parent, or the parent is not held at the source)


class ReplicaStore(Protocol):
    kind: str

    def sent_snapshots(self, name: str) -> list[str]:
        """Snapshots of ``name`` this source still holds as parents, oldest first."""
        ...

    async def send(self, name: str, uid: str, parent: str | None, snapshot: str,
                   out: FrameWriter) -> bool:
        """Write header, payload and end mark of snapshot ``snapshot`` of ``name``; a
        delta against ``parent`` if it is held here. Whether it was whole."""
        ...

    async def receive(self, uid: str, header: Header, payload: AsyncIterator[bytes]) -> None:
        """Make ``header.snapshot`` of ``uid`` from a checked header and its payload; it
        appears only once complete. Raises VolumeExists if it is held, ParentNotHeld."""
        ...

    def snapshots(self, uid: str) -> list[str]: ...

    def drop(self, uid: str) -> None: ...

    def uids(self) -> list[str]: ...

    def promote(self, uid: str, snapshot: str, name: str) -> None: ...


class Scratching(Protocol):
    """What ``discard`` needs of a pool."""

    def incoming_scratch(self) -> Path: ...

    def discard_scratch(self, scratch: Path) -> None: ...


def discard(pool: Scratching, path: Path) -> None:
    """Make ``path`` gone at once (one rename into the pool's ``.tmp``), then delete it:
    a crash in between leaves it where ``ensure`` clears it, never half deleted in
    place. Blocking."""
    if not os.path.lexists(path):
        return
    scratch = pool.incoming_scratch()
    try:
        os.rename(path, scratch / "trash")
    finally:
        pool.discard_scratch(scratch)
