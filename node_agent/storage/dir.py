"""LXD's ``dir`` storage driver: every volume is a plain directory tree.

::

    <pool>/containers/<instance>/rootfs/              the instance volume
    <pool>/containers-snapshots/<instance>/<snap>/    a full copy of it
    <pool>/virtual-machines/<instance>/               a VM's volume: its qcow2 overlay
                                                      and snapshot names (drivers/qemu)
    <pool>/replication/<instance>/<snap>              manifests of replicas sent from here
    <pool>/replicas/<uid>/<snap>/                     replicas received (node_agent/replication)
    <pool>/vm-replicas/<uid>/<snap>/root.qcow2        VMs' replicas received (replication/vm.py)
    <pool>/.tmp/<pid>-<token>/                        copies in flight, trees being deleted
    <pool>/.spares/<template key>/<token>/rootfs/     ready-made copies of a template (each
                                                      with its ``.baseline-manifest``)

Each change is built in ``.tmp`` and then put in place with one rename
(``renameat2``: NOREPLACE so a name is never clobbered, EXCHANGE so a restore
swaps the whole volume at once), so a failure half-way leaves nothing behind.
Deletes rename the tree away first, then remove it without following symlinks.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node_agent.storage.baseline import write_baseline_manifest
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound
from node_agent.storage.topdir import spread_subdirectories

COPY_TIMEOUT = 1800.0
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


class VolumeLayout:
    """Where a pool keeps each volume under its ``path``: the same for every driver, so
    the drivers and the transfers that read a pool's trees agree on it."""

    path: Path

    def instance_path(self, name: str) -> Path:
        return self.path / "containers" / _check_name(name)

    def rootfs_path(self, name: str) -> Path:
        return self.instance_path(name) / "rootfs"

    def snapshots_path(self, name: str) -> Path:
        return self.path / "containers-snapshots" / _check_name(name)

    def snapshot_path(self, name: str, snap: str) -> Path:
        return self.snapshots_path(name) / _check_name(snap)

    def vm_volume_path(self, name: str) -> Path:
        """Where the QEMU driver keeps a VM's disk (its snapshots are inside it)."""
        return self.path / "virtual-machines" / _check_name(name)

    def replication_path(self, name: str) -> Path:
        """What this member keeps of the replicas it sends of ``name``'s volume (btrfs:
        read-only snapshots, dir: manifests); by instance name, so it is renamed and
        deleted with the volume."""
        return self.path / "replication" / _check_name(name)

    def replicas_path(self, uid: str) -> Path:
        """Replica snapshots received here of instance ``uid``'s volume; by uid, because
        the instance can be renamed on the member that runs it."""
        return self.path / "replicas" / _check_name(uid)

    def rename(self, old: str, new: str) -> None:
        """Rename the volume, its snapshots and what this member keeps of the replicas
        it sent (``replication_path``); on failure none is renamed. Blocking."""
        src = self.instance_path(old)
        if not src.is_dir():
            raise VolumeNotFound(f"instance volume {old} not found")
        moves = [(self.snapshots_path(old), self.snapshots_path(new)),
                 (self.replication_path(old), self.replication_path(new))]
        for _, dst in moves:
            if os.path.lexists(dst):
                raise VolumeExists(f"{dst} already exists")
        _rename(src, self.instance_path(new), _RENAME_NOREPLACE, what=f"instance volume {new}")
        done: list[tuple[Path, Path]] = [(src, self.instance_path(new))]
        try:
            for before, after in moves:
                if before.exists():
                    _rename(before, after, _RENAME_NOREPLACE, what=str(after))
                    done.append((before, after))
        except BaseException:
            for before, after in reversed(done):
                _rename(after, before, _RENAME_NOREPLACE, what=str(before))
            raise


class DirPool(VolumeLayout):
    """One ``dir`` pool. All methods block; callers run them in worker threads."""

    driver = "dir"

    def __init__(self, name: str, path: Path, description: str = "") -> None:
        self.name = name
        self.path = Path(path)
        self.description = description

    def ensure(self) -> None:
        """Create the layout (0711: an unprivileged container's root must traverse it)
        and remove what crashed copies and deletes left in ``.tmp``."""
        for sub in ("", "containers", "containers-snapshots", "virtual-machines"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
            (self.path / sub).chmod(0o711)
        for private in (self.path / ".tmp", self.path / ".spares", self.path / "replication",
                        self.path / "replicas"):
            private.mkdir(mode=0o700, exist_ok=True)
        spread_subdirectories(self.path / ".tmp")  # every new tree starts there
        for entry in (self.path / ".tmp").iterdir():
            pid = entry.name.split("-", 1)[0]
            if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
                _remove_tree(entry)

    # instances ---------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self.instance_path(name).is_dir()

    def list_instances(self) -> list[str]:
        return _names(self.path / "containers")

    def create_from_template(self, name: str, template_rootfs: Path,
                             spare: bool = True) -> Path:
        """Give ``name`` a copy of ``template_rootfs`` (owners, modes, links, xattrs kept).

        Takes a spare copy from ``prepare_spare`` when one is ready (unless ``spare`` is
        false: the caller tried), else copies. Returns the rootfs path. Raises
        VolumeExists, or StorageError if the copy fails (then nothing is left behind).
        """
        target = self.instance_path(name)
        if target.exists():
            raise VolumeExists(f"instance volume {name} already exists")
        if spare and self.take_spare(template_rootfs, target):
            return target / "rootfs"
        with self._scratch() as scratch:
            scratch.chmod(0o711)
            _copy(Path(template_rootfs), scratch / "rootfs")
            _rename(scratch, target, _RENAME_NOREPLACE, what=f"instance volume {name}")
        return target / "rootfs"

    def delete(self, name: str, missing_ok: bool = False) -> None:
        """Remove the instance volume, all its snapshots and its replication manifests."""
        target = self.instance_path(name)
        if not target.exists() and not missing_ok:
            raise VolumeNotFound(f"instance volume {name} not found")
        self._discard(target)
        self._discard(self.snapshots_path(name))
        self._discard(self.replication_path(name))

    def incoming_scratch(self) -> Path:
        """A directory in ``.tmp`` to unpack a volume arriving from another member into
        (removed by ``discard_scratch``, or by ``ensure`` once this process is gone)."""
        scratch = self.tmp() / f"{os.getpid()}-in-{secrets.token_hex(6)}"
        scratch.mkdir(mode=0o711)
        return scratch

    def adopt(self, name: str, scratch: Path) -> None:
        """Move the volume and snapshots of ``name`` unpacked in ``scratch`` (laid out as
        the pool is) into place; on failure neither is moved."""
        volume = scratch / self.instance_path(name).relative_to(self.path)
        snapshots = scratch / self.snapshots_path(name).relative_to(self.path)
        if not (volume / "rootfs").is_dir():
            raise StorageError(f"the stream held no volume for {name}")
        moved = snapshots.exists()
        if moved:
            _rename(snapshots, self.snapshots_path(name), _RENAME_NOREPLACE,
                    what=f"snapshots of {name}")
        try:
            _rename(volume, self.instance_path(name), _RENAME_NOREPLACE,
                    what=f"instance volume {name}")
        except BaseException:
            if moved:
                _rename(self.snapshots_path(name), snapshots, _RENAME_NOREPLACE,
                        what=f"snapshots of {name}")
            raise

    @staticmethod
    def discard_scratch(scratch: Path) -> None:
        if os.path.lexists(scratch):
            _remove_tree(scratch)

    # snapshots ---------------------------------------------------------------

    def snapshot(self, name: str, snap: str) -> Path:
        """Copy the whole instance volume to snapshot ``snap``; returns its path."""
        source, target = self.instance_path(name), self.snapshot_path(name, snap)
        if not source.is_dir():
            raise VolumeNotFound(f"instance volume {name} not found")
        if target.exists():
            raise VolumeExists(f"snapshot {name}/{snap} already exists")
        with self._scratch() as scratch:
            _copy(source, scratch / "volume")
            target.parent.mkdir(mode=0o700, exist_ok=True)
            _rename(scratch / "volume", target, _RENAME_NOREPLACE, what=f"snapshot {name}/{snap}")
        return target

    def restore(self, name: str, snap: str) -> None:
        """Replace the instance volume by a copy of the snapshot, in one rename.

        The instance must be stopped; the swap itself is atomic (RENAME_EXCHANGE).
        """
        source, target = self.snapshot_path(name, snap), self.instance_path(name)
        if not source.is_dir():
            raise VolumeNotFound(f"snapshot {name}/{snap} not found")
        if not target.is_dir():
            raise VolumeNotFound(f"instance volume {name} not found")
        with self._scratch() as scratch:
            _copy(source, scratch / "volume")
            _rename(scratch / "volume", target, _RENAME_EXCHANGE, what=f"instance volume {name}")
        # the scratch dir, holding the old volume after the exchange, is removed on exit

    def delete_snapshot(self, name: str, snap: str) -> None:
        target = self.snapshot_path(name, snap)
        if not target.exists():
            raise VolumeNotFound(f"snapshot {name}/{snap} not found")
        self._discard(target)

    def rename_snapshot(self, name: str, old: str, new: str) -> None:
        src, dst = self.snapshot_path(name, old), self.snapshot_path(name, new)
        if not src.is_dir():
            raise VolumeNotFound(f"snapshot {name}/{old} not found")
        _rename(src, dst, _RENAME_NOREPLACE, what=f"snapshot {name}/{new}")

    def list_snapshots(self, name: str) -> list[str]:
        """Snapshot names of ``name``, sorted; [] when it has none."""
        return _names(self.snapshots_path(name))

    # spares ------------------------------------------------------------------

    def prepare_spare(self, template_rootfs: Path) -> Path:
        """Copy ``template_rootfs`` ahead of time so the next create is one rename.

        Call it from a background worker after a create. Templates must not change
        in place (an image's unpacked rootfs); a template replaced at the same path
        gets a new key, and ``drop_spares`` removes the old ones.
        """
        shelf = self.path / ".spares" / _template_key(Path(template_rootfs))
        shelf.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._scratch() as scratch:
            scratch.chmod(0o711)
            _copy(Path(template_rootfs), scratch / "rootfs", background=True)
            write_baseline_manifest(scratch)  # what a move may take from a spare
            spare = shelf / scratch.name
            _rename(scratch, spare, _RENAME_NOREPLACE, what="spare")
        return spare

    def spare_count(self, template_rootfs: Path) -> int:
        shelf = self.path / ".spares" / _template_key(Path(template_rootfs))
        return len(list(shelf.glob("*"))) if shelf.is_dir() else 0

    def drop_spares(self) -> None:
        """Remove every spare copy (e.g. after an image is deleted)."""
        for name in _names(self.path / ".spares"):
            self._discard(self.path / ".spares" / name)

    def take_spare(self, template_rootfs: Path, target: Path) -> bool:
        """Rename a ready spare copy of ``template_rootfs`` to ``target``; False if none."""
        shelf = self.path / ".spares" / _template_key(Path(template_rootfs))
        for spare in sorted(shelf.glob("*")) if shelf.is_dir() else []:
            try:  # several creators may race for one spare: one rename wins
                _rename(spare, target, _RENAME_NOREPLACE, what=f"instance volume {target.name}")
            except VolumeNotFound:
                continue
            return True
        return False

    # pool ----------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        """Space and inodes of the pool's filesystem, in LXD's ``resources`` shape."""
        st = os.statvfs(self.path)
        return {"space": {"used": (st.f_blocks - st.f_bfree) * st.f_frsize,
                          "total": st.f_blocks * st.f_frsize},
                "inodes": {"used": st.f_files - st.f_ffree, "total": st.f_files}}

    def info(self) -> dict[str, Any]:
        """The pool in LXD's ``GET /1.0/storage-pools/NAME`` shape (callers fill used_by)."""
        return {"name": self.name, "driver": self.driver, "description": self.description,
                "config": {"source": str(self.path)}, "status": "Created",
                "locations": ["none"], "used_by": []}

    # helpers -------------------------------------------------------------------

    def tmp(self) -> Path:
        """``.tmp``, made if missing; each tree made in it gets a block group of its own
        (``topdir``)."""
        tmp = self.path / ".tmp"
        if not tmp.is_dir():
            tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
            spread_subdirectories(tmp)
        return tmp

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path]:
        """A fresh directory in ``.tmp``, removed on exit whatever is left in it."""
        scratch = self.tmp() / f"{os.getpid()}-{secrets.token_hex(6)}"
        scratch.mkdir(mode=0o700)
        try:
            yield scratch
        finally:
            if os.path.lexists(scratch):
                _remove_tree(scratch)

    def _discard(self, path: Path) -> None:
        """Move ``path`` into ``.tmp`` (one rename: it is gone at once), then delete it."""
        if not os.path.lexists(path):
            return
        with self._scratch() as scratch:
            os.rename(path, scratch / "trash")


def _check_name(name: str) -> str:
    """One path component inside the pool: no '/', not hidden, not '.' or '..'."""
    if (not isinstance(name, str) or not name or "/" in name or "\0" in name
            or name.startswith(".") or len(name.encode()) > 255):
        raise StorageError(f"invalid volume name {name!r}", code=400)
    return name


def _names(directory: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory)
                      if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _template_key(template: Path) -> str:
    """Names a template's spares; a template replaced at the same path gets a new key."""
    try:
        st = os.stat(template)
    except FileNotFoundError as exc:
        raise VolumeNotFound(f"source tree {template} not found") from exc
    ident = f"{template.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_ctime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _copy(src: Path, dst: Path, background: bool = False) -> None:
    """``cp -a``: owners, modes, times, symlinks, hardlinks, xattrs; reflinks where possible.

    ``background`` copies (spares) run at the lowest CPU and I/O priority so they never
    slow down the starts and creates they are meant to speed up.
    """
    if not src.is_dir():
        raise VolumeNotFound(f"source tree {src} not found")
    argv = ["cp", "-a", "--reflink=auto", "--no-target-directory", str(src), str(dst)]
    if background:
        argv = ["nice", "-n", "19", "ionice", "-c", "3", *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COPY_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"copying {src}: {exc}") from exc
    if proc.returncode != 0:
        raise StorageError(f"copying {src} failed: {proc.stderr.strip()[-2000:]}")


def _rename(src: Path, dst: Path, flags: int, what: str) -> None:
    """renameat2(2). A taken ``dst`` raises VolumeExists, a missing ``src`` VolumeNotFound."""
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    err = ctypes.get_errno() if rc != 0 else 0
    if err in (errno.EINVAL, errno.ENOSYS):  # a filesystem without renameat2 flags
        _rename_fallback(src, dst, flags, what)
    elif err in (errno.EEXIST, errno.ENOTEMPTY):
        raise VolumeExists(f"{what} already exists")
    elif err == errno.ENOENT:
        raise VolumeNotFound(f"{what}: {src} not found")
    elif err:
        raise StorageError(f"renaming {src} to {dst}: {os.strerror(err)}")


def _rename_fallback(src: Path, dst: Path, flags: int, what: str) -> None:
    """The same with plain renames: not atomic, only checked first."""
    if flags == _RENAME_EXCHANGE:
        aside = src.with_name(src.name + ".aside")
        os.rename(dst, aside)
        os.rename(src, dst)
        os.rename(aside, src)
        return
    if os.path.lexists(dst):
        raise VolumeExists(f"{what} already exists")
    try:
        os.rename(src, dst)
    except FileNotFoundError as exc:
        raise VolumeNotFound(f"{what}: {src} not found") from exc


def _remove_tree(path: Path) -> None:
    """Delete a tree as root, whatever its owners; symlinks are removed, never followed."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    shutil.rmtree(path)
