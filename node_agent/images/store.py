"""On-disk image store, keyed by fingerprint as LXD does.

Layout under ``root``::

    <fp>/image.json           ImageInfo + rootfs format (so list() never opens tarballs)
    <fp>/<fp>                 the tarball as imported (unified, or the metadata half)
    <fp>/<fp>.rootfs          split images only: squashfs, rootfs tarball or qcow2
    <fp>/meta/                metadata.yaml and templates/, unpacked at import
    <fp>/rootfs-<shift>/      cached unpacked rootfs ("privileged" or the uid shift)
    <fp>/.lock                flock held while a rootfs template is built or deleted

Every change becomes visible through one ``rename``: an import is assembled in a
temporary directory beside the others, a rootfs template is unpacked into a temporary
directory, so a crash never leaves a half image or half template behind.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImageError, ImageNotFound
from .importing import Progress, copy_hashing, scan_metadata_tarball, scan_rootfs_tarball
from .tarball import lxd_architecture, sniff
from .templates import apply_templates
from .unpack import extract_squashfs, extract_tar

_FP_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ImageInfo:
    """What the API reports about a stored image."""

    fingerprint: str
    filename: str
    size: int
    architecture: str
    type: str  # "container" | "virtual-machine"
    properties: dict[str, str]
    created_at: float
    expires_at: float | None
    templates: dict[str, Any] = field(default_factory=dict)
    uploaded_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class ImageStore:
    """Images on local disk; every method blocks (call from a worker thread)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # unprivileged containers must traverse into templates
        self._remove_leftovers()

    # -- queries -----------------------------------------------------------------

    def has(self, fp: str) -> bool:
        return _FP_RE.match(fp) is not None and (self.root / fp / "image.json").is_file()

    def info(self, fp: str) -> ImageInfo:
        """Raises ImageNotFound for unknown (or malformed) fingerprints."""
        return ImageInfo.from_dict(self._record(fp)["info"])

    def list(self) -> builtins.list[ImageInfo]:
        infos = []
        for fp in self._fingerprints():
            with contextlib.suppress(ImageNotFound):
                infos.append(self.info(fp))
        return infos

    def resolve_prefix(self, prefix: str) -> str:
        """The one fingerprint starting with ``prefix``; ImageNotFound if none or several."""
        prefix = prefix.lower()
        if not prefix or not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            raise ImageNotFound(f"image not found: {prefix!r}")
        matches = [fp for fp in self._fingerprints() if fp.startswith(prefix)]
        if len(matches) != 1:
            what = "ambiguous image fingerprint" if matches else "image not found"
            raise ImageNotFound(f"{what}: {prefix!r}")
        return matches[0]

    def export_paths(self, fp: str) -> builtins.list[Path]:
        """The tarball, or the metadata tarball then the rootfs file for split images."""
        record = self._record(fp)
        paths = [self.root / fp / fp]
        if record["split"]:
            paths.append(self.root / fp / f"{fp}.rootfs")
        return paths

    # -- import / delete -----------------------------------------------------------

    def import_file(self, path: Path, rootfs_path: Path | None = None,
                    progress: Progress | None = None,
                    expected: str | None = None) -> ImageInfo:
        """Validate and store an image; return its info (the stored one if already present).

        The fingerprint is sha256 of the file, or of metadata then rootfs bytes for a
        split image. ``expected`` (the uploader's claim, or the fingerprint a peer was
        asked for) is checked before anything is stored: a mismatch raises ImageError
        and leaves the store as it was, above all an image it already held under the
        real fingerprint. Raises ImageError for anything invalid or unsafe; a failed
        import removes only its own scratch directory.
        """
        tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=self.root))
        try:
            hasher = hashlib.sha256()
            size = copy_hashing(Path(path), tmp / "image", hasher, progress, "metadata")
            if rootfs_path is not None:
                size += copy_hashing(Path(rootfs_path), tmp / "rootfs", hasher, progress,
                                     "rootfs")
            fp = hasher.hexdigest()
            if expected and expected.lower() != fp:
                raise ImageError(f"Fingerprint mismatch: the image is {fp}, not {expected[:64]}")
            if self.has(fp):
                return self.info(fp)
            if progress:
                progress("validating")
            record = self._validate(tmp, split=rootfs_path is not None)
            info = _make_info(fp, Path(path).name, size, record.pop("meta"), record["vm"])
            record["info"] = info.to_dict()
            os.rename(tmp / "image", tmp / fp)
            if rootfs_path is not None:
                os.rename(tmp / "rootfs", tmp / f"{fp}.rootfs")
            _write_json(tmp / "image.json", record)
            os.chmod(tmp, 0o711)
            try:
                os.rename(tmp, self.root / fp)
            except OSError:
                if not self.has(fp):  # lost a race with an identical import: fine
                    raise
            return self.info(fp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def delete(self, fp: str) -> None:
        """Remove an image and its cached rootfs templates; ImageNotFound if absent."""
        self._record(fp)
        trash = self.root / f".deleting-{fp}-{os.getpid()}-{time.monotonic_ns()}"
        with self._lock(fp):
            try:
                os.rename(self.root / fp, trash)
            except FileNotFoundError as exc:
                raise ImageNotFound(f"image not found: {fp}") from exc
        shutil.rmtree(trash, ignore_errors=True)

    # -- instances -------------------------------------------------------------------

    def ready_rootfs_template(self, fp: str, uid_shift: int | None) -> Path | None:
        """The template ``rootfs_template`` would return, if it is built already."""
        tag = "privileged" if uid_shift is None else str(uid_shift)
        final = self.root / fp / f"rootfs-{tag}"
        return final if final.is_dir() else None

    def rootfs_template(self, fp: str, uid_shift: int | None) -> Path:
        """A fully unpacked rootfs to clone instances from, owned by the shifted root.

        Built once per (image, shift) and cached; safe against concurrent callers
        (threads or processes) and crashes. Raises ImageError for VM images.
        """
        record = self._record(fp)
        if record["vm"]:
            raise ImageError(f"image {fp[:12]} is a virtual-machine image: no rootfs tree")
        tag = "privileged" if uid_shift is None else str(uid_shift)
        final = self.root / fp / f"rootfs-{tag}"
        if final.is_dir():  # published by rename: existence means complete
            return final
        with self._lock(fp):
            if final.is_dir():
                return final
            for stale in (self.root / fp).glob(".rootfs-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a crash: we hold the lock
            tmp = self.root / fp / f".rootfs-{tag}.tmp"
            try:
                self._unpack(fp, record, tmp, uid_shift or 0)
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def render_templates(self, fp: str, rootfs: Path, instance_name: str, trigger: str,
                         uid_shift: int | None, *,
                         config: Mapping[str, str] | None = None) -> None:
        """Render the image's templates for ``trigger`` into ``rootfs`` (never outside it)."""
        info = self.info(fp)
        instance = {"name": instance_name, "architecture": info.architecture,
                    "privileged": uid_shift is None, "ephemeral": False,
                    "config": dict(config or {})}
        context = {"instance": instance, "container": instance,
                   "config": dict(config or {}), "devices": {}}
        apply_templates(self.root / fp / "meta" / "templates", info.templates,
                        Path(rootfs).resolve(), trigger, context, uid_shift or 0)

    # -- internals ---------------------------------------------------------------------

    def _remove_leftovers(self) -> None:
        """Drop what a crash left: trash, and imports untouched for an hour."""
        cutoff = time.time() - 3600
        for path in self.root.glob(".*"):
            with contextlib.suppress(OSError):
                if path.name.startswith(".deleting-") or (
                        path.name.startswith(".import-") and path.stat().st_mtime < cutoff):
                    shutil.rmtree(path)

    def _fingerprints(self) -> builtins.list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if _FP_RE.match(p.name) and (p / "image.json").is_file())

    def _record(self, fp: str) -> dict[str, Any]:
        if not _FP_RE.match(fp or ""):
            raise ImageNotFound(f"image not found: {fp!r}")
        try:
            with open(self.root / fp / "image.json", encoding="utf-8") as f:
                record: dict[str, Any] = json.load(f)
        except FileNotFoundError as exc:
            raise ImageNotFound(f"image not found: {fp}") from exc
        return record

    @contextlib.contextmanager
    def _lock(self, fp: str) -> Iterator[None]:
        # flock conflicts between separate open() calls even inside one process, so
        # this serialises threads of this daemon and other processes alike.
        try:
            f = open(self.root / fp / ".lock", "a+b")
        except FileNotFoundError as exc:
            raise ImageNotFound(f"image not found: {fp}") from exc
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if not (self.root / fp / "image.json").is_file():
                    raise ImageNotFound(f"image not found: {fp}")  # deleted while we waited
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _validate(self, tmp: Path, split: bool) -> dict[str, Any]:
        """Scan the copied files; return the record to persist (plus "meta")."""
        found = scan_metadata_tarball(tmp / "image", tmp / "meta")
        if split:
            fmt = sniff(tmp / "rootfs")
            if fmt == "tar" or fmt == "zstd":
                scan_rootfs_tarball(tmp / "rootfs")
                fmt = "tar"
            vm = fmt == "qcow2"
        elif found["rootfs_img"]:
            fmt, vm = "unified-img", True
        elif found["rootfs_dir"]:
            fmt, vm = "unified", False
        else:
            raise ImageError("image has neither rootfs/ nor a separate rootfs file")
        return {"split": split, "rootfs_format": fmt, "vm": vm, "meta": found["meta"]}

    def _unpack(self, fp: str, record: Mapping[str, Any], tmp: Path, shift: int) -> None:
        fmt = record["rootfs_format"]
        if fmt == "squashfs":
            extract_squashfs(self.root / fp / f"{fp}.rootfs", tmp, shift)
            return
        tmp.mkdir(mode=0o755)
        if fmt == "unified":
            extract_tar(self.root / fp / fp, tmp, shift, prefix="rootfs")
        else:
            extract_tar(self.root / fp / f"{fp}.rootfs", tmp, shift, prefix=None)


def _make_info(fp: str, filename: str, size: int, meta: Mapping[str, Any],
               vm: bool) -> ImageInfo:
    expiry = int(meta.get("expiry_date") or 0)
    return ImageInfo(
        fingerprint=fp, filename=filename, size=size,
        architecture=lxd_architecture(meta["architecture"]),
        type="virtual-machine" if vm else "container",
        properties=dict(meta["properties"]), created_at=float(int(meta["creation_date"])),
        expires_at=float(expiry) if expiry else None,
        templates=dict(meta["templates"]), uploaded_at=time.time())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
