"""LXD's ``btrfs`` storage driver: every volume is a subvolume, clones are snapshots.

::

    <pool>/containers/<instance>/              the instance volume: a writable subvolume
                                               holding rootfs/
    <pool>/containers-snapshots/<instance>/<snap>/   read-only snapshots of it
    <pool>/images/<template key>/              an image's rootfs template (rootfs/ in a
                                               subvolume): every create snapshots it
    <pool>/virtual-machines/<instance>/        a VM's volume: a plain directory, as on dir
    <pool>/replication/<instance>/<snap>/      read-only snapshots sent to a replica holder
    <pool>/replicas/<uid>/<snap>/              read-only snapshots received from a source,
                                               by instance uid (node_agent/replication)
    <pool>/vm-replicas/<uid>/<snap>/           VMs' replicas: qcow2 files in plain
                                               directories (node_agent/replication/vm.py)
    <pool>/.tmp/<pid>-<token>/                 volumes in the making

``<pool>`` is a btrfs mount: by default a sparse loop file ``<CORRAL_DIR>/disks/<pool>.img``
(LXD's place for it) mounted at ``storage-pools/<pool>`` when the pool is opened, and again
after a restart; or a block device (already holding btrfs) mounted there; or a directory
on a btrfs filesystem mounted by someone else, used as it is.

The first create from an image copies its template once into a subvolume of the pool;
every later create is a snapshot of it: instant, and sharing its blocks until written.
Owners (an unprivileged container's shifted ids) are kept by both. Snapshots of an
instance are read-only snapshots; a restore swaps in a writable snapshot of one
(``renameat2`` EXCHANGE). ``send``/``receive`` ship a volume between members as a
``btrfs send`` stream, incrementally against a snapshot both sides have.

A read-only subvolume cannot move to another directory (EROFS: its ``..`` would
change), so read-only ones are made where they stay; directories holding them move whole.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from node_agent.storage import btrfs_cli as cli
from node_agent.storage.dir import (
    _RENAME_EXCHANGE,
    _RENAME_NOREPLACE,
    VolumeLayout,
    _check_name,
    _copy,
    _names,
    _rename,
    _template_key,
)
from node_agent.storage.errors import StorageError, VolumeExists, VolumeNotFound
from node_agent.storage.sizes import default_loop_size, parse_size

_LAYOUT = ("containers", "containers-snapshots", "virtual-machines", "images", "replication",
           "replicas")


class BtrfsPool(VolumeLayout):
    """One ``btrfs`` pool. All methods block; callers run them in worker threads.

    ``config``: ``source`` (a block device, or a directory on btrfs; none: a loop file in
    ``disks``) and ``size`` of the loop file (LXD's units; default: LXD's rule,
    ``sizes.default_loop_size``).
    """

    driver = "btrfs"

    def __init__(self, name: str, path: Path, config: dict[str, str] | None = None,
                 disks: Path | None = None, description: str = "") -> None:
        self.name = name
        self.config = dict(config or {})
        self.description = description
        source = self.config.get("source", "")
        self.device: Path | None = None
        self.loop_file: Path | None = None
        if source and Path(source).is_block_device():
            self.device, self.path = Path(source), Path(path)
        elif source:
            self.path = Path(source)  # an existing btrfs directory, used as it is
        else:
            self.path = Path(path)
            self.loop_file = Path(disks or Path(path).parent) / f"{name}.img"

    # layout ------------------------------------------------------------------

    def ensure(self) -> None:
        """Mount the pool if it is not (making its loop file on first use), create the
        layout and delete what crashed operations left in ``.tmp`` and half-received
        replicas. Idempotent. StorageError if the source is no btrfs."""
        self._mount()
        if not cli.is_btrfs(self.path):
            raise StorageError(f"storage pool {self.name}: {self.path} is not on btrfs", code=400)
        self.path.chmod(0o711)
        for sub in _LAYOUT:
            (self.path / sub).mkdir(exist_ok=True)
            (self.path / sub).chmod(0o711)
        self.tmp()
        for entry in (self.path / ".tmp").iterdir():
            pid = entry.name.split("-", 1)[0]
            if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
                _remove(entry)
        for uid in _names(self.path / "replicas"):
            for snap in _names(self.replicas_path(uid)):
                if not cli.is_readonly(self.replicas_path(uid) / snap):
                    _remove(self.replicas_path(uid) / snap)  # a receive that was cut

    def _mount(self) -> None:
        if self.device is None and self.loop_file is None:
            if not self.path.is_dir():
                raise StorageError(f"storage pool {self.name}: {self.path} does not exist",
                                   code=400)
            return
        if cli.mount_source(self.path) is not None:
            return  # mounted before a restart of the daemon: keep it
        self.path.mkdir(mode=0o711, parents=True, exist_ok=True)
        if any(self.path.iterdir()):
            raise StorageError(f"storage pool {self.name}: {self.path} is not empty: "
                               "refusing to mount over it", code=400)
        made = False
        if self.loop_file is not None and not self.loop_file.exists():
            self.loop_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            cli.make_loop_file(self.loop_file, self.loop_size())
            made = True
        try:
            cli.mount(self.loop_file or self.device or self.path, self.path,
                      loop=self.loop_file is not None)
        except StorageError:
            if made and self.loop_file is not None:
                self.loop_file.unlink(missing_ok=True)
            raise

    def loop_size(self) -> int:
        """Bytes of the loop file to make: ``size``, else LXD's default."""
        if self.config.get("size"):
            return parse_size(self.config["size"])
        return default_loop_size(shutil.disk_usage(self._free_space_of()).free)

    def _free_space_of(self) -> Path:
        assert self.loop_file is not None
        probe = self.loop_file.parent
        while not probe.exists():
            probe = probe.parent
        return probe

    def unmount(self) -> None:
        """Unmount a pool this pool mounted (a loop file's device goes with it); a
        directory source is left alone. For a pool's delete or a teardown."""
        if (self.device or self.loop_file) and cli.mount_source(self.path) is not None:
            cli.unmount(self.path)

    # instances ---------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self.instance_path(name).is_dir()

    def list_instances(self) -> list[str]:
        return _names(self.path / "containers")

    def create_from_template(self, name: str, template_rootfs: Path,
                             spare: bool = True) -> Path:
        """Give ``name`` a writable snapshot of ``template_rootfs`` imported into the pool
        (``prepare_spare``; copied once per template). Returns the rootfs path. Raises
        VolumeExists, or StorageError (then nothing is left behind)."""
        target = self.instance_path(name)
        if os.path.lexists(target):
            raise VolumeExists(f"instance volume {name} already exists")
        image = self.prepare_spare(template_rootfs)
        cli.snapshot(image, target, readonly=False)
        return target / "rootfs"

    def delete(self, name: str, missing_ok: bool = False) -> None:
        """Remove the instance volume, its snapshots and its replication snapshots (not
        replicas received here: those are by uid, ``drop_replicas``)."""
        target = self.instance_path(name)
        if not os.path.lexists(target) and not missing_ok:
            raise VolumeNotFound(f"instance volume {name} not found")
        _remove(target)
        for holder in (self.snapshots_path(name), self.replication_path(name)):
            _remove_holder(holder)

    def incoming_scratch(self) -> Path:
        """A directory in ``.tmp`` to unpack a volume arriving as a tar stream into
        (``adopt`` turns it into subvolumes)."""
        scratch = self.tmp() / f"{os.getpid()}-in-{secrets.token_hex(6)}"
        scratch.mkdir(mode=0o711)
        return scratch

    def adopt(self, name: str, scratch: Path) -> None:
        """Make ``name``'s volume and snapshots, unpacked as plain trees in ``scratch``
        (laid out as the pool is), into subvolumes and put them in place (the copies are
        reflinks: no data is written twice). On failure neither is in place."""
        volume = scratch / self.instance_path(name).relative_to(self.path)
        snapshots = scratch / self.snapshots_path(name).relative_to(self.path)
        if not (volume / "rootfs").is_dir():
            raise StorageError(f"the stream held no volume for {name}")
        if os.path.lexists(self.instance_path(name)):
            raise VolumeExists(f"instance volume {name} already exists")
        with self._scratch() as work:
            _tree_to_subvolume(volume, work / "volume", readonly=False)
            holder = work / "snapshots"
            holder.mkdir(mode=0o700)
            for snap in _names(snapshots):
                _tree_to_subvolume(snapshots / snap, holder / snap, readonly=True)
            if _names(holder):
                _rename(holder, self.snapshots_path(name), _RENAME_NOREPLACE,
                        what=f"snapshots of {name}")
            try:
                _rename(work / "volume", self.instance_path(name), _RENAME_NOREPLACE,
                        what=f"instance volume {name}")
            except BaseException:
                if _names(self.snapshots_path(name)):
                    _rename(self.snapshots_path(name), holder, _RENAME_NOREPLACE,
                            what=f"snapshots of {name}")
                raise

    @staticmethod
    def discard_scratch(scratch: Path) -> None:
        _remove(scratch)

    # snapshots ---------------------------------------------------------------

    def snapshot(self, name: str, snap: str) -> Path:
        """A read-only snapshot ``snap`` of the instance volume (instant); its path."""
        source, target = self.instance_path(name), self.snapshot_path(name, snap)
        if not source.is_dir():
            raise VolumeNotFound(f"instance volume {name} not found")
        if os.path.lexists(target):
            raise VolumeExists(f"snapshot {name}/{snap} already exists")
        target.parent.mkdir(mode=0o700, exist_ok=True)
        cli.snapshot(source, target, readonly=True)
        return target

    def restore(self, name: str, snap: str) -> None:
        """Replace the instance volume by a writable snapshot of ``snap``, in one rename
        (RENAME_EXCHANGE); the old volume is deleted after. The instance must be stopped."""
        source, target = self.snapshot_path(name, snap), self.instance_path(name)
        if not source.is_dir():
            raise VolumeNotFound(f"snapshot {name}/{snap} not found")
        if not target.is_dir():
            raise VolumeNotFound(f"instance volume {name} not found")
        with self._scratch() as scratch:
            cli.snapshot(source, scratch / "volume", readonly=False)
            _rename(scratch / "volume", target, _RENAME_EXCHANGE, what=f"instance volume {name}")
        # the scratch dir, holding the old volume after the exchange, is removed on exit

    def delete_snapshot(self, name: str, snap: str) -> None:
        target = self.snapshot_path(name, snap)
        if not os.path.lexists(target):
            raise VolumeNotFound(f"snapshot {name}/{snap} not found")
        _remove(target)

    def rename_snapshot(self, name: str, old: str, new: str) -> None:
        """Renamed in its directory (allowed for a read-only subvolume: its ``..`` stays)."""
        src, dst = self.snapshot_path(name, old), self.snapshot_path(name, new)
        if not src.is_dir():
            raise VolumeNotFound(f"snapshot {name}/{old} not found")
        _rename(src, dst, _RENAME_NOREPLACE, what=f"snapshot {name}/{new}")

    def list_snapshots(self, name: str) -> list[str]:
        return _names(self.snapshots_path(name))

    # image templates (the dir pool's "spares") ---------------------------------

    def prepare_spare(self, template_rootfs: Path) -> Path:
        """The template's subvolume in the pool, copied in (``rootfs/`` inside) unless it
        is there already; returns it. Concurrent callers each copy, one rename wins."""
        image = self.path / "images" / _template_key(Path(template_rootfs))
        if image.is_dir():
            return image
        with self._scratch() as scratch:
            _tree_to_subvolume(Path(template_rootfs), scratch / "image", readonly=False,
                               inside="rootfs")
            with contextlib.suppress(VolumeExists):
                _rename(scratch / "image", image, _RENAME_NOREPLACE, what="image template")
        with contextlib.suppress(StorageError):  # a loser of the race finds it ro already
            cli.set_readonly(image, True)
        return image

    def spare_count(self, template_rootfs: Path) -> int:
        """1 once the template is in the pool (every create is then a snapshot), else 0."""
        return int((self.path / "images" / _template_key(Path(template_rootfs))).is_dir())

    def drop_spares(self) -> None:
        """Delete every template subvolume (instances made from one keep their blocks)."""
        for key in _names(self.path / "images"):
            _remove(self.path / "images" / key)

    @staticmethod
    def take_spare(template_rootfs: Path, target: Path) -> bool:
        """No ready copies here: a create is a snapshot (``create_from_template``)."""
        return False

    # send/receive (replication) ------------------------------------------------

    def send(self, name: str, parent: str | None, out: int | IO[bytes],
             snap: str | None = None) -> str:
        """Take a new read-only replication snapshot of ``name``'s volume (named ``snap``,
        else ``r<ns now>``) and write it to ``out`` as a ``btrfs send`` stream: only what
        changed since replication snapshot ``parent`` (which the receiver must hold) when
        given, else whole. Returns the new snapshot's name (the parent of the next send);
        on failure it is deleted."""
        source = self.instance_path(name)
        if not source.is_dir():
            raise VolumeNotFound(f"instance volume {name} not found")
        base = None
        if parent is not None:
            base = self.replication_path(name) / _check_name(parent)
            if not base.is_dir():
                raise VolumeNotFound(f"replication snapshot {name}/{parent} not found")
        snap = _check_name(snap or f"r{time.time_ns():020d}")
        target = self.replication_path(name) / snap
        if os.path.lexists(target):
            raise VolumeExists(f"replication snapshot {name}/{snap} already exists")
        target.parent.mkdir(mode=0o700, exist_ok=True)
        cli.snapshot(source, target, readonly=True)
        try:
            cli.send(target, base, out)
        except BaseException:
            _remove(target)
            raise
        return snap

    def list_replication_snapshots(self, name: str) -> list[str]:
        """Replication snapshots of ``name`` sent from here, oldest first."""
        return _names(self.replication_path(name))

    def drop_replication_snapshot(self, name: str, snap: str) -> None:
        _remove(self.replication_path(name) / _check_name(snap))

    def receive(self, uid: str, stream: int | IO[bytes]) -> str:
        """Receive a ``send`` stream into ``replicas/<uid>/`` (an incremental one needs
        its parent received there before); returns the snapshot's name. Raises
        StorageError on a bad or cut stream, leaving nothing of it behind (``ensure``
        deletes what a crash in the middle left)."""
        holder = self.replicas_path(uid)
        holder.mkdir(mode=0o700, parents=True, exist_ok=True)
        before = set(_names(holder))
        try:
            cli.receive(holder, stream)
        except BaseException:
            for snap in set(_names(holder)) - before:
                _remove(holder / snap)
            raise
        new = sorted(set(_names(holder)) - before)
        if len(new) != 1 or not cli.received_uuid(holder / new[0]):
            for snap in new:
                _remove(holder / snap)
            raise StorageError(f"the stream for {uid} held {len(new)} complete subvolumes, "
                               "expected one")
        return new[0]

    def list_replicas(self, uid: str) -> list[str]:
        """Complete snapshots of instance ``uid`` received here, oldest first (one still
        being received is writable until its stream ends)."""
        holder = self.replicas_path(uid)
        return [snap for snap in _names(holder) if cli.is_readonly(holder / snap)]

    def replica_uids(self) -> list[str]:
        """Uids of the instances with a complete snapshot received here, sorted."""
        return [uid for uid in _names(self.path / "replicas") if self.list_replicas(uid)]

    def drop_replica(self, uid: str, snap: str) -> None:
        _remove(self.replicas_path(uid) / _check_name(snap))

    def drop_replicas(self, uid: str) -> None:
        """Delete every snapshot of ``uid`` received here (none: nothing to do)."""
        _remove_holder(self.replicas_path(uid))

    def promote_replica(self, uid: str, snap: str, name: str) -> Path:
        """Make received snapshot ``snap`` of ``uid`` the instance volume ``name`` (a
        writable snapshot of it: instant); returns the rootfs. VolumeExists if there is
        one, VolumeNotFound without the snapshot."""
        source = self.replicas_path(uid) / _check_name(snap)
        if not source.is_dir():
            raise VolumeNotFound(f"replica {uid}/{snap} not found")
        target = self.instance_path(name)
        if os.path.lexists(target):
            raise VolumeExists(f"instance volume {name} already exists")
        cli.snapshot(source, target, readonly=False)
        return target / "rootfs"

    # pool ----------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        """Space and inodes of the pool's filesystem, in LXD's ``resources`` shape (btrfs
        allocates inodes dynamically: reported as statvfs has them)."""
        st = os.statvfs(self.path)
        return {"space": {"used": (st.f_blocks - st.f_bfree) * st.f_frsize,
                          "total": st.f_blocks * st.f_frsize},
                "inodes": {"used": st.f_files - st.f_ffree, "total": st.f_files}}

    def info(self) -> dict[str, Any]:
        source = str(self.loop_file or self.device or self.path)
        config = {"source": source, **({"size": self.config["size"]}
                                        if self.config.get("size") else {})}
        return {"name": self.name, "driver": self.driver, "description": self.description,
                "config": config, "status": "Created", "locations": ["none"], "used_by": []}

    # helpers -------------------------------------------------------------------

    def tmp(self) -> Path:
        tmp = self.path / ".tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        return tmp

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path]:
        """A fresh directory in ``.tmp``, removed on exit with any subvolume left in it."""
        scratch = self.tmp() / f"{os.getpid()}-{secrets.token_hex(6)}"
        scratch.mkdir(mode=0o700)
        try:
            yield scratch
        finally:
            _remove(scratch)


def _tree_to_subvolume(tree: Path, target: Path, readonly: bool, inside: str = "") -> None:
    """A new subvolume at ``target`` holding a copy of ``tree`` (at ``inside`` in it, or
    as its root), owners, modes and xattrs kept; reflinked when ``tree`` is on this pool."""
    cli.create_subvolume(target)
    try:
        if inside:
            target.chmod(0o711)  # an unprivileged container's root must traverse it
        _copy(tree, target / inside if inside else target)  # cp -aT: into it, owner too
        if readonly:
            cli.set_readonly(target, True)
    except BaseException:
        _remove(target)
        raise


def _remove(path: Path) -> None:
    """Delete ``path`` whatever it is: a subvolume (with nested ones), or a tree that may
    hold subvolumes (a scratch directory), or a file."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not path.is_dir():
        path.unlink()
        return
    if os.lstat(path).st_ino == cli.SUBVOLUME_INODE:
        cli.delete_subvolume(path)
        return
    for inner in cli.nested_subvolumes(path):
        if os.path.lexists(inner):
            cli.delete_subvolume(inner)
    shutil.rmtree(path)


def _remove_holder(holder: Path) -> None:
    """Delete a directory of read-only snapshots, each of them, then itself."""
    for snap in _names(holder):
        _remove(holder / snap)
    _remove(holder)
