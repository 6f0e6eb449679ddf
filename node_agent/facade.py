"""``NodeFacade``: everything the API needs from this member's host, in one place.

::

    cluster/api handlers ──> NodeFacade ──> LocalNode (drivers by type, pools, images,
                                │            bridges) and NodeAgent (images from peers,
                                │            spares, a moved copy's removal)
                                ├─────────> VolumeMoves (volume_moves.py)
                                └─────────> HeldReplicas (replication/holding.py: HA
                                             replicas this member holds)

The API never imports a driver, storage, network or image module: it asks the facade.
What it gets back is plain data (dicts, paths, ``InstanceSpec``) or a typed
``CorralError`` (``DriverError``, ``StorageError``, ...) for the error middleware.
Methods documented as blocking touch the host (liblxc, QMP, the filesystem): callers
run them in a worker thread. Async methods hop to threads themselves.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.state.model import Instance
from corral_shared.instance_metrics import Sample
from node_agent.agent import NodeAgent
from node_agent.capacity import host_capacity
from node_agent.drivers.base import DriverError
from node_agent.drivers.lxc_state import stopped_state
from node_agent.drivers.qemu import migration
from node_agent.drivers.qemu.accel_choice import check_mode
from node_agent.drivers.registry import CONTAINER, VM
from node_agent.images import builds
from node_agent.images.errors import ImageNotFound
from node_agent.images.store import ImageInfo
from node_agent.network.bridge import BridgeNetwork, list_host_interfaces
from node_agent.node import InstanceSpec, LocalNode
from node_agent.paths import Paths
from node_agent.replication.holding import HeldReplicas
from node_agent.replication.names import is_snapshot_name
from node_agent.storage import pools as storage_pools
from node_agent.volume_moves import Listing, VolumeMoves

__all__ = ["FileTarget", "InstanceSpec", "Listing", "NodeFacade", "is_replica_snapshot"]

LXC_LOG = "lxc.log"
CONSOLE_LOG = "console.log"
# (ca_pem, cert_pem, key_pem) of this member's leaf for QEMU's migration streams.
MigrationCredentials = tuple[bytes, bytes, bytes]


def is_replica_snapshot(name: object) -> bool:
    """Whether ``name`` is an HA replica snapshot's (``r`` and 20 digits of ns)."""
    return is_snapshot_name(name)


@dataclass(frozen=True)
class FileTarget:
    """Where an instance's files live and how its ids map to the host's."""

    rootfs: Path
    uid_shift: int
    gid_shift: int
    count: int  # ids mapped (ignored when unshifted)


class NodeFacade:
    """This member's host as the API sees it."""

    MIGRATION_HOSTNAME = migration.TLS_HOSTNAME  # the name the target's leaf must carry

    def __init__(self, node: LocalNode, agent: NodeAgent) -> None:
        self._node = node
        self._agent = agent
        self.volumes = VolumeMoves(node, agent)
        self.replicas: HeldReplicas = agent.replicas  # shared with the agent's sweep

    @property
    def paths(self) -> Paths:
        return self._node.paths

    def rename(self, member: str) -> None:
        """Act as ``member`` from now on (a joining member takes the cluster's name)."""
        self._agent.member = member

    @staticmethod
    def spec_of(state: Any, inst: Instance) -> InstanceSpec:
        """The instance's spec with its profiles expanded, as the agent runs it (call
        under the state lock)."""
        return NodeAgent._spec_of(state, inst)

    # Live state (blocking).

    def state(self, name: str, instance_type: str = CONTAINER) -> dict[str, Any]:
        """LXD's instance state, from the driver; a Stopped state if it is not defined."""
        return self._node.state(name, instance_type)

    def status(self, name: str, instance_type: str = CONTAINER) -> str:
        return self._node.status(name, instance_type)

    def fenced_instances(self) -> int:
        """HA instance processes fencing killed here since this daemon started (its own
        kills and the watchdog's; ``fencing/kills.py``). Read from memory."""
        return self._agent.fencing.kills.count

    def metric_samples(self, name: str, instance_type: str = CONTAINER) -> list[Sample]:
        """LXD's instance metrics of a running instance (``corral_shared.instance_metrics``):
        [] when it does not run here."""
        return self._node.metric_samples(name, instance_type)

    @staticmethod
    def stopped_state() -> dict[str, Any]:
        """LXD's state of an instance that does not run."""
        return stopped_state()

    # Exec, files, logs and console.

    def exec_argv(self, instance_type: str, name: str, command: list[str],
                  env: dict[str, str], cwd: str, uid: int, gid: int) -> list[str]:
        """The argv that runs ``command`` in the instance (blocking)."""
        return self._node.drivers.get(instance_type).exec_argv(name, command, env, cwd,
                                                               uid, gid)

    def exec_output_dir(self, name: str) -> Path:
        """Where recorded exec output of the instance goes."""
        return self._node.paths.exec_output / name

    def file_target(self, spec: InstanceSpec) -> FileTarget:
        """The instance's rootfs and id shift; DriverError if its pool is not here."""
        idmap = self._node.idmap
        if spec.privileged:
            return FileTarget(self._node.rootfs(spec), 0, 0, 0)
        return FileTarget(self._node.rootfs(spec), idmap.uid_base, idmap.gid_base,
                          min(idmap.uid_count, idmap.gid_count))

    def log_files(self, name: str) -> dict[str, Path]:
        """Every readable log of the instance by name: ``lxc.log``, ``console.log`` (a
        container's console or a VM's serial console) and recorded exec output
        (blocking)."""
        files = {LXC_LOG: self._node.paths.containers / name / LXC_LOG}
        console = self._node.driver.log_path(name)
        for driver in self._node.drivers:
            if console.is_file():
                break
            console = driver.log_path(name)
        if console.is_file():
            files[CONSOLE_LOG] = console
        files.update(self.exec_files(name))
        return files

    def exec_files(self, name: str) -> dict[str, Path]:
        """Only the recorded exec output files of the instance (blocking)."""
        try:
            return {p.name: p for p in sorted(self.exec_output_dir(name).iterdir())
                    if p.name.startswith("exec_") and p.is_file()}
        except FileNotFoundError:
            return {}

    def vm_console_dir(self, name: str) -> Path:
        """The VM's directory (its console socket and log); DriverError 503 if this
        member runs no VMs."""
        if not self._node.drivers.has(VM):
            raise DriverError(f"Virtual machines are not available on this member: "
                              f"{self._node.vm_problem}", code=503)
        return self._node.qemu().vm_dir(name)

    # Images (blocking unless async).

    def import_image(self, metadata: Path, rootfs: Path | None,
                     expected: str | None) -> ImageInfo:
        return self._node.images.import_file(metadata, rootfs, expected=expected)

    @staticmethod
    def image_build_problem(kind: object) -> str:
        """Why this member cannot build an image of ``kind``, or ``""`` if it can: the
        API refuses the request (400) before it starts anything."""
        return builds.kind_problem(kind)

    def build_image(self, kind: str, vm: bool, uefi: bool,
                    progress: Callable[[str], None]) -> ImageInfo:
        """Build the image of ``kind`` here and store it exactly as an upload of the same
        tarball is stored (same fingerprint; the stored one if it exists already). The
        build runs in a scratch directory under ``images/tmp``, removed afterwards and
        emptied at daemon start. Blocking; ImageError (400) for an unknown kind or a
        missing tool."""
        scratch = self._node.paths.images / "tmp"
        scratch.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=scratch) as tmp:
            out = builds.build(kind, Path(tmp), vm=vm, uefi=uefi, progress=progress)
            progress(f"storing {out.name}")
            return self._node.images.import_file(out)

    def delete_image(self, fingerprint: str) -> None:
        """Drop the image's files here (none is fine) and the spares made from it."""
        try:
            self._node.images.delete(fingerprint)
        except ImageNotFound:
            pass  # the record is gone; no files on this member is the goal anyway
        for pool in self._node.pools.values():
            pool.drop_spares()

    def image_export_paths(self, fingerprint: str) -> list[Path]:
        """[unified tarball] or [metadata, rootfs]; ImageNotFound (404) if absent."""
        return list(self._node.images.export_paths(fingerprint))

    # Pools, networks and capacity (blocking unless async).

    @staticmethod
    def pool_config_problem(driver: str, config: dict[str, str]) -> str:
        """Why a pool of ``driver`` with ``config`` cannot be made here, or ``""``
        (blocking: stats the source, probes the tools)."""
        return storage_pools.config_problem(driver, config)

    def pool_usage(self, name: str) -> dict[str, Any]:
        return self._node.pool(name).usage()

    def network_leases(self, name: str) -> list[dict[str, Any]] | None:
        """The DHCP leases of a managed bridge here, None if there is no such bridge."""
        network = self._node.networks.get(name)
        return None if network is None else network.leases()

    @staticmethod
    def host_interfaces() -> list[dict[str, Any]]:
        return list_host_interfaces()

    def capacity(self, pool_source: Path | None = None) -> dict[str, float]:
        """This host's CPUs, memory and pool size (of ``pool_source`` when the default
        pool lives elsewhere), before it joins a cluster."""
        return host_capacity(pool_source or self._node.paths.storage_pools)

    @property
    def instance_types(self) -> list[str]:
        """The instance types this member has a driver for (a new member's record)."""
        return self._node.instance_types

    async def open_local_parts(self, pools: list[tuple[str, str, dict[str, str]]],
                               networks: list[tuple[str, str]]) -> None:
        """Make sure the named pools (name, driver, config) and bridges (name, IPv4
        address) exist here; those that do already are left alone."""
        for name, driver, config in pools:
            if name not in self._node.pools:
                await asyncio.to_thread(self._node.add_pool, name, None, driver, config)
        for name, address in networks:
            if name not in self._node.networks:
                network = BridgeNetwork(name, address, self._node.paths.networks / name)
                await asyncio.to_thread(network.ensure)
                self._node.networks[name] = network

    # Drivers and the VM accelerator.

    def driver_info(self) -> dict[str, str]:
        """LXD's ``driver``/``driver_version`` ("lxc | qemu"), and how VMs are
        accelerated (blocking: probes the container driver)."""
        names, versions = ["lxc"], [self._node.driver.probe().version]
        if self._node.drivers.has(VM):
            names.append("qemu")
            versions.append(self._node.vm_version)
        accel, reason = self._node.vm_accelerator_now()
        return {"driver": " | ".join(names), "driver_version": " | ".join(versions),
                "vm_accelerator": accel or "probing", "vm_accelerator_reason": reason}

    @staticmethod
    def check_vm_accelerator_mode(mode: str) -> str:
        """``core.vm_accelerator`` normalised; ValueError if it is not auto, kvm or tcg."""
        return check_mode(mode)

    def set_vm_accelerator_mode(self, mode: str) -> None:
        self._node.set_vm_accelerator_mode(mode)

    # Live migration of a VM: the target's and the source's halves.

    async def prepare_incoming(self, spec: InstanceSpec, listen_host: str,
                               credentials: Callable[[], MigrationCredentials],
                               ) -> dict[str, Any]:
        """Target: a paused QEMU waiting for the migration on ``listen_host``, its disk
        exported over NBD (the image fetched first if this member lacks it); the
        ``incoming`` the source is to send to."""
        await self._agent.ensure_image(spec.image)

        def run() -> migration.Incoming:
            return migration.prepare_incoming(self._node.qemu(),
                                              self._node.vm_definition(spec), listen_host,
                                              migration.Credentials(*credentials()))

        return (await asyncio.to_thread(run)).to_json()

    @staticmethod
    def check_incoming(incoming: dict[str, Any]) -> None:
        """DriverError 400 if ``incoming`` is not what ``prepare_incoming`` answers."""
        try:
            migration.Incoming.from_json(incoming)
        except (migration.MigrationError, TypeError, ValueError) as exc:
            raise DriverError(str(exc), code=400) from exc

    def migrate_out(self, name: str, incoming: dict[str, Any],
                    credentials: Callable[[], MigrationCredentials], downtime_ms: int,
                    progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Source: mirror the disk and migrate RAM to the prepared target (blocking); the
        stats. On an error the VM runs here again."""
        stats = migration.migrate_out(self._node.qemu(), name,
                                      migration.Incoming.from_json(incoming),
                                      migration.Credentials(*credentials()), downtime_ms,
                                      progress)
        return dict(stats.__dict__)

    def finish_incoming(self, name: str) -> None:
        """Target, once the move is committed: run the guest (blocking)."""
        migration.finish_incoming(self._node.qemu(), name)

    def abort_incoming(self, name: str) -> None:
        """Target, a failed migration: drop the waiting QEMU (blocking)."""
        migration.abort_incoming(self._node.qemu(), name)

    def resume_source(self, name: str) -> None:
        """Source, the move not committed: run the guest here again (blocking)."""
        migration.resume_source(self._node.qemu(), name)

    def drop_source(self, name: str) -> None:
        """Source, the VM lives on the target: quit the paused QEMU and delete the VM's
        files here (blocking)."""
        driver = self._node.qemu()
        migration.finish_source(driver, name)
        driver.delete(name)
