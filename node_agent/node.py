"""The local parts of one member: its driver, storage pools, image store and bridge.

Everything here is blocking; callers run it in worker threads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_agent.drivers.base import DriverError, InstanceDefinition, NotFound
from node_agent.drivers.lxc import LxcDriver
from node_agent.drivers.lxc_state import stopped_state
from node_agent.idmap import IdMap
from node_agent.images import ImageStore
from node_agent.network.bridge import BridgeNetwork
from node_agent.paths import Paths
from node_agent.storage.dir import DirPool


@dataclass
class InstanceSpec:
    """A copy of what the agent needs of one instance, taken under the state lock."""

    uid: str
    name: str
    image: str
    config: dict[str, str]
    devices: dict[str, dict[str, str]]

    @property
    def privileged(self) -> bool:
        return self.config.get("security.privileged", "false") in ("true", "1", "yes", "on")

    @property
    def pool(self) -> str:
        for dev in self.devices.values():
            if dev.get("type") == "disk" and dev.get("path") == "/":
                return dev.get("pool", "default")
        return "default"


@dataclass
class LocalNode:
    paths: Paths
    idmap: IdMap
    driver: LxcDriver
    images: ImageStore
    pools: dict[str, DirPool] = field(default_factory=dict)
    networks: dict[str, BridgeNetwork] = field(default_factory=dict)

    @classmethod
    def open(cls, paths: Paths, idmap: IdMap) -> LocalNode:
        prefix = "corral-" + hashlib.sha256(str(paths.root).encode()).hexdigest()[:8]
        return cls(paths, idmap, LxcDriver(paths.containers, idmap, prefix),
                   ImageStore(paths.images))

    def add_pool(self, name: str, source: str | None = None) -> DirPool:
        pool = DirPool(name, Path(source) if source else self.paths.storage_pools / name)
        pool.ensure()
        self.pools[name] = pool
        return pool

    def pool(self, name: str) -> DirPool:
        pool = self.pools.get(name)
        if pool is None:
            raise DriverError(f"Storage pool {name!r} is not available on this member")
        return pool

    def uid_shift(self, spec: InstanceSpec) -> int | None:
        return None if spec.privileged else self.idmap.uid_base

    def rootfs(self, spec: InstanceSpec) -> Path:
        return self.pool(spec.pool).rootfs_path(spec.name)

    def restock_spare(self, spec: InstanceSpec) -> None:
        """Keep one ready copy of the spec's image rootfs so the next create is a rename."""
        pool = self.pool(spec.pool)
        template = self.images.rootfs_template(spec.image, self.uid_shift(spec))
        if pool.spare_count(template) == 0:
            pool.prepare_spare(template)

    def status(self, name: str) -> str:
        """The driver's status; an instance whose container is not (or no longer)
        defined is simply Stopped."""
        try:
            return self.driver.status(name)
        except NotFound:
            return "Stopped"

    def state(self, name: str) -> dict[str, Any]:
        try:
            return self.driver.state(name)
        except NotFound:
            return stopped_state()

    def define(self, spec: InstanceSpec) -> None:
        self.driver.define(InstanceDefinition(spec.name, self.rootfs(spec), spec.config,
                                              spec.devices))
