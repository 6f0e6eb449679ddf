"""The volumes of stopped VMs on a storage pool, seen as a pool by the volume transfer of a
cold move.

A VM's volume is ``<pool>/virtual-machines/<name>/`` (``DirPool.vm_volume_path``): its
qcow2 overlay (internal snapshots included) and its snapshot names. Its spec and runtime
files stay in the VM's runtime directory under ``<CORRAL_DIR>/vms`` and do not move.
``send_volume``/``receive_volume`` move the volume as they move a container's
(``storage/transfer.py``): unpacked into a scratch directory of the pool, renamed into
place only once whole. The overlay's backing file names the source's image path; the
target's ``define`` writes the VM's spec there and points it at its own copy of the image.
"""

from __future__ import annotations

import os
from pathlib import Path

from node_agent.storage.base import StoragePool
from node_agent.storage.dir import _RENAME_NOREPLACE, _remove_tree, _rename
from node_agent.storage.errors import StorageError, VolumeNotFound

DISK = "root.qcow2"  # as node_agent.drivers.qemu.cmdline.DISK


class VmVolumes:
    """Pool-like access to the VM volumes of ``pool`` (all methods block). Paths in a
    transfer are relative to the pool: ``virtual-machines/<name>``."""

    def __init__(self, pool: StoragePool) -> None:
        self.pool = pool
        self.path = pool.path

    def instance_path(self, name: str) -> Path:
        return self.pool.vm_volume_path(name)

    def snapshots_path(self, name: str) -> Path:
        """VM snapshots live inside the overlay: no separate tree (never exists)."""
        return self.path / ".no-separate-snapshots" / name

    def exists(self, name: str) -> bool:
        return (self.instance_path(name) / DISK).is_file()

    def incoming_scratch(self) -> Path:
        return self.pool.incoming_scratch()

    def adopt(self, name: str, scratch: Path) -> None:
        """Rename the VM volume unpacked in ``scratch`` (laid out as the pool is) into
        place."""
        unpacked = scratch / self.instance_path(name).relative_to(self.path)
        if not (unpacked / DISK).is_file():
            raise StorageError(f"the stream held no disk for VM {name}")
        _rename(unpacked, self.instance_path(name), _RENAME_NOREPLACE, what=f"VM {name}")

    def discard_scratch(self, scratch: Path) -> None:
        self.pool.discard_scratch(scratch)

    def delete(self, name: str, missing_ok: bool = False) -> None:
        """Remove the volume of a VM this member never defined (a VM's own delete
        removes it with the VM)."""
        directory = self.instance_path(name)
        if not os.path.lexists(directory):
            if missing_ok:
                return
            raise VolumeNotFound(f"VM {name} not found")
        _remove_tree(directory)
