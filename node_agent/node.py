"""The local parts of one member: its driver, storage pools, image store and bridge.

Everything here is blocking; callers run it in worker threads.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral_shared.instance_metrics import Sample
from node_agent.drivers.base import DriverError, InstanceDefinition, InstanceDriver, NotFound
from node_agent.drivers.lxc import LxcDriver
from node_agent.drivers.lxc_state import stopped_state
from node_agent.drivers.qemu import QemuDriver, migration
from node_agent.drivers.qemu.accel_choice import check_mode as check_vm_accelerator_mode
from node_agent.drivers.qemu.cmdline import DISK as VM_DISK
from node_agent.drivers.qemu.driver import probe_guest
from node_agent.drivers.registry import VM, DriverRegistry
from node_agent.idmap import IdMap
from node_agent.images import ImageStore
from node_agent.images.vm_unpack import unpack_vm_image
from node_agent.migration_leftovers import EndStep, Side
from node_agent.network.bridge import BridgeNetwork
from node_agent.paths import Paths
from node_agent.storage.base import StoragePool
from node_agent.storage.pools import open_pool

__all__ = ["InstanceSpec", "LocalNode", "check_vm_accelerator_mode"]


@dataclass
class InstanceSpec:
    """A copy of what the agent needs of one instance, taken under the state lock."""

    uid: str
    name: str
    image: str
    config: dict[str, str]
    devices: dict[str, dict[str, str]]
    type: str = "container"  # or "virtual-machine"
    epoch: int = 0  # the placement epoch (``Instance.epoch``): a failover raises it
    from_replica: str = ""  # set while a failover's create is to start it from a replica

    @property
    def is_vm(self) -> bool:
        return self.type == "virtual-machine"

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
    """The member's parts. Instance drivers are looked up by instance type in
    ``drivers``; ``driver`` is the container driver, for its own checkpoint calls."""

    paths: Paths
    idmap: IdMap
    driver: LxcDriver
    images: ImageStore
    pools: dict[str, StoragePool] = field(default_factory=dict)
    networks: dict[str, BridgeNetwork] = field(default_factory=dict)
    drivers: DriverRegistry = field(default_factory=DriverRegistry)
    vm_version: str = ""
    vm_accelerator: str = ""  # "kvm" or "tcg" once probed ("" until then)

    def __post_init__(self) -> None:
        self.drivers.register(self.driver)

    @classmethod
    def open(cls, paths: Paths, idmap: IdMap) -> LocalNode:
        node = cls(paths, idmap, LxcDriver(paths.containers, idmap, paths.cgroup_prefix),
                   ImageStore(paths.images))
        qemu = QemuDriver(paths.vms, find_guest=lambda: probe_guest(paths.images))
        info = qemu.probe()
        node.vm_version = info.version
        if info.error:
            node.drivers.unavailable(VM, info.error)
        else:
            node.drivers.register(qemu)
        return node

    @property
    def vm_driver(self) -> QemuDriver | None:
        """The VM driver, None when QEMU is not usable on this member (``vm_problem``)."""
        return self.qemu() if self.drivers.has(VM) else None

    @property
    def vm_problem(self) -> str:
        """Why this member runs no VMs ("" when it does)."""
        return self.drivers.problem(VM)

    def probe_accelerator(self) -> str:
        """KVM if it really runs guests here, else TCG (a probe in a child, up to ~25 s;
        blocking). See node_agent/drivers/qemu/accel_choice.py."""
        if self.vm_driver is not None and not self.vm_accelerator:
            self.vm_accelerator = self.vm_driver.accelerator()
        return self.vm_accelerator

    def set_vm_accelerator_mode(self, mode: str) -> None:
        """``core.vm_accelerator`` (auto, kvm, tcg; "" is auto); ValueError if invalid.
        The next VM start decides under the new mode."""
        if self.vm_driver is not None:
            self.vm_driver.choice.set_mode(mode)
            self.vm_accelerator = ""

    def vm_accelerator_now(self) -> tuple[str, str]:
        """(accelerator, why) as known now, without probing: ("", "") while the probe
        runs; the accelerator a VM would start under, which a broken KVM changes."""
        if self.vm_driver is None:
            return "none", self.vm_problem
        known = self.vm_driver.choice.known()
        return (known.name, known.reason) if known else ("", "")

    @property
    def instance_types(self) -> list[str]:
        return self.drivers.types

    def driver_for(self, instance_type: str) -> InstanceDriver:
        """The driver of ``instance_type`` (``drivers.get``); DriverError if none here."""
        return self.drivers.get(instance_type)

    def qemu(self) -> QemuDriver:
        """The VM driver, or DriverError saying why this member has none."""
        driver = self.drivers.get(VM)
        assert isinstance(driver, QemuDriver)
        return driver

    def add_pool(self, name: str, source: str | None = None, driver: str = "dir",
                 config: dict[str, str] | None = None) -> StoragePool:
        """Open pool ``name`` of ``driver`` (``storage.pools``: a btrfs one is mounted,
        its loop file made on first use); ``source`` overrides ``config["source"]``."""
        config = dict(config or {})
        if source:
            config["source"] = source
        pool = open_pool(name, driver, config, self.paths.storage_pools / name,
                         self.paths.disks)
        self.pools[name] = pool
        return pool

    def pool(self, name: str) -> StoragePool:
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

    def status(self, name: str, instance_type: str = "container") -> str:
        """The driver's status; an instance whose container or VM is not (or no longer)
        defined is simply Stopped."""
        try:
            return self.driver_for(instance_type).status(name)
        except NotFound:
            return "Stopped"

    def instance_pid(self, name: str, instance_type: str = "container") -> int:
        """The pid a fence kills (a container's init, a VM's QEMU); 0 if not running."""
        try:
            return self.driver_for(instance_type).pid(name)
        except DriverError:
            return 0

    def vm_migrations_left(self) -> list[tuple[str, Side]]:
        """The VMs that hold half of a live migration that nothing of this member follows
        any more, and which half (``migration_leftovers``). Only stats."""
        driver = self.vm_driver
        if driver is None:
            return []
        left: list[tuple[str, Side]] = []
        for name in driver.names():
            if migration.outgoing_left(driver, name):
                left.append((name, "outgoing"))
            elif migration.incoming_left(driver, name):
                left.append((name, "incoming"))
        return left

    def end_vm_migration(self, name: str, step: EndStep) -> None:
        """Carry out ``step`` (``migration_leftovers.end_step``) on VM ``name``. Raises
        DriverError (InvalidState: e.g. a source whose migration never completed is
        not dropped)."""
        driver = self.qemu()
        if step == "resume_source":
            migration.resume_source(driver, name)
        elif step == "drop_source":
            migration.finish_source(driver, name)
            driver.delete(name)
        elif step == "finish_incoming" and driver.status(name) != "Stopped":
            migration.finish_incoming(driver, name)
        elif step == "finish_incoming":  # its QEMU died: the power plan reports it stopped
            migration.keep_incoming(driver, name)
        elif step == "abort_incoming":
            migration.abort_incoming(driver, name)

    def has_volume(self, spec: InstanceSpec) -> bool:
        """Whether this member has the instance's volume (its rootfs, or its VM disk):
        what a created instance cannot be without."""
        pool = self.pools.get(spec.pool)
        if pool is None:
            return False
        if spec.is_vm:
            return (pool.vm_volume_path(spec.name) / VM_DISK).is_file()
        return pool.exists(spec.name)

    def state(self, name: str, instance_type: str = "container") -> dict[str, Any]:
        try:
            return self.driver_for(instance_type).state(name)
        except NotFound:
            return stopped_state()

    def metric_samples(self, name: str, instance_type: str = "container") -> list[Sample]:
        """LXD's metrics of a running instance; [] when it is not defined or not running."""
        try:
            return self.driver_for(instance_type).metric_samples(name)
        except NotFound:
            return []

    def define(self, spec: InstanceSpec) -> None:
        if spec.is_vm:
            self.qemu().define(self.vm_definition(spec))
            return
        self.driver.define(InstanceDefinition(spec.name, self.rootfs(spec), spec.config,
                                              spec.devices))

    def vm_definition(self, spec: InstanceSpec) -> InstanceDefinition:
        """What QEMU runs for ``spec``, its disk on the pool of its root disk (blocking:
        unpacks the image on first use)."""
        volume = self.pool(spec.pool).vm_volume_path(spec.name)
        return InstanceDefinition(spec.name, self.vm_image_dir(spec.image), spec.config,
                                  spec.devices, volume)

    def vm_image_dir(self, fingerprint: str) -> Path:
        """The image unpacked for QEMU (rootfs.img, and kernel and initrd unless it boots
        through UEFI), once per image; VMs boot from qcow2 overlays on its rootfs.img."""
        target = self.paths.images / f"{fingerprint}.vm"
        if not target.is_dir():
            scratch = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
            files = self.images.export_paths(fingerprint)  # [tarball] or [metadata, disk]
            unpack_vm_image(files[0], scratch, files[1] if len(files) > 1 else None)
            try:
                scratch.rename(target)
            except OSError:  # unpacked meanwhile by another create of the same image
                shutil.rmtree(scratch, ignore_errors=True)
        return target
