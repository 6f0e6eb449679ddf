"""Checking an image while it is imported: copy-and-hash, member scans, metadata.

Everything here reads the copy that will be kept, never the caller's file again, so
what was validated is exactly what is stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ImageError
from .metadata import parse_metadata
from .tarball import (
    METADATA_LIMIT,
    TEMPLATES_LIMIT,
    check_member,
    open_stream,
    read_limited,
    strip_prefix,
)

Progress = Callable[[str], None]

_CHUNK = 1 << 20


def copy_hashing(src: Path, dst: Path, hasher: Any, progress: Progress | None,
                 label: str) -> int:
    """Copy ``src`` to ``dst`` while hashing it; return the byte count."""
    try:
        total = src.stat().st_size
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            done = last = 0
            while chunk := fin.read(_CHUNK):
                hasher.update(chunk)
                fout.write(chunk)
                done += len(chunk)
                percent = done * 100 // total if total else 100
                if progress and percent != last:
                    progress(f"{label}: {percent}%")
                    last = percent
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise ImageError(f"cannot read image file {src}: {exc.strerror}") from exc
    return done


def scan_metadata_tarball(archive: Path, meta_dir: Path) -> dict[str, Any]:
    """Check every member; keep metadata.yaml and templates/ in ``meta_dir``."""
    raw: bytes | None = None
    rootfs_dir = rootfs_img = False
    templates_size = 0
    (meta_dir / "templates").mkdir(parents=True)
    with open_stream(archive) as tf:
        for m in tf:
            name = check_member(m, "rootfs")
            if name == "metadata.yaml" and m.isreg():
                raw = read_limited(tf, m, METADATA_LIMIT)
            elif name == "rootfs.img" and m.isreg():
                rootfs_img = True
            elif strip_prefix(name, "rootfs") is not None:
                rootfs_dir = True
            elif strip_prefix(name, "templates") and m.isreg():
                templates_size += m.size
                if templates_size > TEMPLATES_LIMIT:
                    raise ImageError("image templates are too large")
                _save_template(meta_dir / name, read_limited(tf, m, METADATA_LIMIT))
    if raw is None:
        raise ImageError(f"{archive.name}: no metadata.yaml in the image")
    (meta_dir / "metadata.yaml").write_bytes(raw)
    meta = parse_metadata(raw, "image")
    return {"meta": meta, "rootfs_dir": rootfs_dir, "rootfs_img": rootfs_img}


def _save_template(target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:
        raise ImageError(f"conflicting template files in image: {exc}") from exc


def scan_rootfs_tarball(archive: Path) -> None:
    """Refuse a rootfs tarball with unsafe names before it is accepted."""
    with open_stream(archive) as tf:
        for m in tf:
            check_member(m, None)
