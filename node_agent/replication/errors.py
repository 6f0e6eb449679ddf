"""The replication package's errors: the storage tree's, with two of its own.

::

    StorageError (node_agent.storage.errors)
     +-- VolumeNotFound
     |    +-- ParentNotHeld   the holder lacks the snapshot a delta builds on: send it whole
     +-- BadStream          not a replica stream, one for another instance, snapshot or
                            pool kind, or one cut short (400)
"""

from __future__ import annotations

from node_agent.storage.errors import StorageError, VolumeNotFound


class ParentNotHeld(VolumeNotFound):
    """The parent snapshot named for a delta is not (or no longer) held here."""


class BadStream(StorageError):
    code = 400
