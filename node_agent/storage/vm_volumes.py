"""The directories of stopped VMs, seen as a pool by the volume transfer of a cold move.

A VM's volume is its directory under ``<CORRAL_DIR>/vms``: spec, qcow2 overlay (its
internal snapshots included) and snapshot names. ``send_volume``/``receive_volume`` move
it as they move a container's (``storage/transfer.py``): unpacked into a scratch
directory, renamed into place only once whole. The overlay's backing file names the
source's image path; the target's ``define`` points it at its own copy of the image.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from node_agent.storage.dir import _RENAME_NOREPLACE, _remove_tree, _rename
from node_agent.storage.errors import StorageError, VolumeNotFound

DISK = "root.qcow2"  # as node_agent.drivers.qemu.cmdline.DISK
SPEC = "config.json"


class VmVolumes:
    """Pool-like access to the VM directories under ``path`` (all methods block)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def instance_path(self, name: str) -> Path:
        if not name or "/" in name or name in (".", ".."):
            raise StorageError(f"invalid instance name {name!r}")
        return self.path / name

    def snapshots_path(self, name: str) -> Path:
        """VM snapshots live inside the overlay: no separate tree (never exists)."""
        return self.path / ".no-separate-snapshots" / name

    def exists(self, name: str) -> bool:
        return (self.instance_path(name) / SPEC).is_file()

    def incoming_scratch(self) -> Path:
        tmp = self.path / ".tmp"
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = tmp / f"{os.getpid()}-in-{secrets.token_hex(6)}"
        scratch.mkdir(mode=0o700)
        return scratch

    def adopt(self, name: str, scratch: Path) -> None:
        """Rename the VM directory unpacked in ``scratch`` into place."""
        unpacked = scratch / name
        if not (unpacked / DISK).is_file():
            raise StorageError(f"the stream held no disk for VM {name}")
        _rename(unpacked, self.instance_path(name), _RENAME_NOREPLACE, what=f"VM {name}")

    @staticmethod
    def discard_scratch(scratch: Path) -> None:
        if os.path.lexists(scratch):
            _remove_tree(scratch)

    def delete(self, name: str, missing_ok: bool = False) -> None:
        directory = self.instance_path(name)
        if not directory.exists():
            if missing_ok:
                return
            raise VolumeNotFound(f"VM {name} not found")
        _remove_tree(directory)
