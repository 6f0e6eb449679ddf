"""Where everything of one daemon lives under ``CORRAL_DIR``.

Every daemon (and every test) has its own root, so several daemons can share
one machine without touching each other's files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# The default directory is the CLI's knowledge too: it lives in the shared vocabulary.
from corral_shared.paths import DEFAULT_DIR as DEFAULT_DIR
from corral_shared.paths import corral_dir as corral_dir


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def cgroup_prefix(self) -> str:
        """The cgroup under which this daemon's containers live (one per CORRAL_DIR, so
        daemons sharing a machine never share one)."""
        return "corral-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:8]

    @property
    def socket(self) -> Path:
        return self.root / "unix.socket"

    @property
    def log(self) -> Path:
        return self.root / "corral.log"

    @property
    def pid(self) -> Path:
        return self.root / "corral.pid"

    @property
    def cluster_file(self) -> Path:
        """Local, non-replicated facts: member name, raft address, network settings."""
        return self.root / "cluster.yaml"

    @property
    def raft_dir(self) -> Path:
        return self.root / "raft"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def containers(self) -> Path:
        """liblxc's ``lxcpath``: one directory per container with its ``config``."""
        return self.root / "containers"

    @property
    def vms(self) -> Path:
        """The QEMU driver's directory: one per VM (specs, sockets, logs; its disk is on
        the storage pool)."""
        return self.root / "vms"

    @property
    def storage_pools(self) -> Path:
        return self.root / "storage-pools"

    @property
    def disks(self) -> Path:
        """Loop files of storage pools (``<pool>.img``, as LXD's ``disks``); made when a
        pool needs one."""
        return self.root / "disks"

    @property
    def networks(self) -> Path:
        return self.root / "networks"

    @property
    def exec_output(self) -> Path:
        return self.root / "exec-output"

    def ensure(self) -> None:
        """Create the tree; directories stay traversable (0711) for unprivileged roots."""
        for path in (self.root, self.raft_dir, self.images, self.containers, self.vms,
                     self.storage_pools, self.networks, self.exec_output):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o711)
