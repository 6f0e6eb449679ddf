"""Unpack a unified VM image into the directory the QEMU driver boots from.

Only four regular files are taken from the tarball (any other member is skipped):
``metadata.yaml``, ``rootfs.img`` (qcow2), and corral's ``kernel`` and ``initrd``, both or
neither: an LXD VM image has no kernel (its disk boots through UEFI). A split image (a
metadata tarball and a separate qcow2 disk, as LXD's image servers publish VM images)
gets its disk copied in as ``rootfs.img``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ImageError
from .metadata import parse_metadata
from .tarball import METADATA_LIMIT, check_member, open_stream, sniff

VM_FILES = ("metadata.yaml", "rootfs.img", "kernel", "initrd")
REQUIRED = ("metadata.yaml", "rootfs.img")
KERNEL_FILES = ("kernel", "initrd")  # direct kernel boot: both, or neither (UEFI)


def unpack_vm_image(tarball: Path, dest: Path, rootfs: Path | None = None) -> Path:
    """Write the VM files of ``tarball`` (and ``rootfs``, a split image's disk, as
    rootfs.img) into ``dest`` (created; must not exist); return it.

    Raises ImageError if the tarball is unsafe, lacks metadata.yaml or rootfs.img, has
    only one of kernel and initrd, or its rootfs.img is not qcow2; ``dest`` is removed
    again on failure."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    try:
        _extract(Path(tarball), dest)
        if rootfs is not None:
            shutil.copyfile(rootfs, dest / "rootfs.img")
            os.chmod(dest / "rootfs.img", 0o644)
        missing = [name for name in REQUIRED if not (dest / name).is_file()]
        kernel = [name for name in KERNEL_FILES if (dest / name).is_file()]
        if len(kernel) == 1:
            missing.append(next(name for name in KERNEL_FILES if name not in kernel))
        if missing:
            raise ImageError(f"{Path(tarball).name} is not a VM image: no "
                             f"{', '.join(missing)}")
        if (dest / "metadata.yaml").stat().st_size > METADATA_LIMIT:
            raise ImageError("metadata.yaml is too large")
        parse_metadata((dest / "metadata.yaml").read_bytes(), Path(tarball).name)
        if sniff(dest / "rootfs.img") != "qcow2":
            raise ImageError("rootfs.img is not a qcow2 disk")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _extract(tarball: Path, dest: Path) -> None:
    with open_stream(tarball) as tf:
        for member in tf:
            name = check_member(member, "rootfs")
            if name not in VM_FILES or not member.isreg():
                continue
            source = tf.extractfile(member)
            if source is None:  # pragma: no cover - isreg() members always have data
                continue
            with open(dest / name, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.chmod(dest / name, 0o644)
