"""Images: LXD-format image tarballs stored by fingerprint, unpacked into rootfs templates.

::

    builds.py     build(kind, vm, uefi): the images a member builds itself (the API's
                  ``{"type": "build"}`` source), over the two recipes below
    busybox.py    build_busybox_image(): a tiny unified image from the host's busybox
    busybox_vm.py build_busybox_vm_image(): busybox VM images (direct kernel boot, UEFI)
    store.py      ImageStore: import / list / delete / export, rootfs templates,
                  template rendering (uses the three modules below)
    tarball.py    stream reading, member-name checks, size limits
    metadata.py   metadata.yaml: no YAML aliases, LXD's shape (string properties)
    unpack.py     safe extraction of tar / squashfs rootfs, uid shifting
    templates.py  the pongo2 subset LXD images use, written chroot-safely
    errors.py     ImageError (400) > ImageNotFound (404)
"""

from .busybox import build_busybox_image
from .errors import ImageError, ImageNotFound
from .store import ImageInfo, ImageStore
from .templates import render

__all__ = [
    "ImageError",
    "ImageInfo",
    "ImageNotFound",
    "ImageStore",
    "build_busybox_image",
    "render",
]
