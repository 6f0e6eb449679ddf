"""Errors of the image subsystem.

Every error carries the HTTP status the API layer should answer with::

    ImageError (400)          invalid or unsafe image, tool missing, bad request
     └── ImageNotFound (404)  no image with that fingerprint (or prefix)

Foreign errors (tarfile, yaml, unsquashfs) are translated into these once, at the
point where they are raised, with ``raise ... from exc``.
"""

from __future__ import annotations

from corral_shared.errors import CodedError


class ImageError(CodedError):
    """An image could not be imported, unpacked or used."""

    code: int = 400


class ImageNotFound(ImageError):
    """No stored image matches the fingerprint or prefix."""

    code = 404
