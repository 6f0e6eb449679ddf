"""The storage package's error tree.

::

    StorageError           any failure of a pool call (code: HTTP-ish status, 500 unless told)
     +-- VolumeNotFound    the instance or snapshot volume does not exist (404)
     +-- VolumeExists      the target name is already taken (409)

A bad name is ``StorageError(..., code=400)``. ``OSError`` and failures of
``cp`` are translated once, in the driver, with ``raise ... from``.
"""

from __future__ import annotations

from corral_shared.errors import CodedError


class StorageError(CodedError):
    """A storage request that failed; ``code`` is the HTTP status to answer."""

    code: int = 500


class VolumeNotFound(StorageError):
    code = 404


class VolumeExists(StorageError):
    code = 409
