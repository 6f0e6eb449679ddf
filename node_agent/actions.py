"""Carry out one step on the real world (blocking; runs in a thread).

Every action is idempotent: after a crash the agent may perform an action a
second time before its report commits, and that must do no harm.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from typing import Any, Protocol

from node_agent.drivers.base import DriverError, NotFound
from node_agent.drivers.qemu import QemuDriver
from node_agent.node import InstanceSpec, LocalNode
from node_agent.replication.promote import create_from_replica
from node_agent.storage.baseline import Baseline, moment, shift_tag, write_baseline
from node_agent.storage.vm_volumes import VmVolumes
from node_agent.volume_owner import Owner, write_owner

log = logging.getLogger(__name__)


def perform(node: LocalNode, spec: InstanceSpec, kind: str, args: dict[str, Any]) -> None:
    """Run action ``kind``; raises DriverError (or a storage/image error) on failure."""
    handler = _ACTIONS.get(kind)
    if handler is None:
        raise DriverError(f"Unknown action {kind!r}")
    handler(node, spec, args)


def _create(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    if spec.from_replica:  # a failover's create: from the replica here, never the image
        create_from_replica(node, spec, _remove)
        return
    if spec.is_vm:  # the disk is a qcow2 overlay the driver makes on the image's disk
        try:
            node.define(spec)
            write_owner(VmVolumes(node.pool(spec.pool)), spec.name, Owner(spec.uid, spec.epoch))
        except Exception:
            _remove(node, spec)
            raise
        return
    pool = node.pool(spec.pool)
    if pool.exists(spec.name):
        node.define(spec)
        return
    shift = node.uid_shift(spec)
    try:
        template = node.images.rootfs_template(spec.image, shift)
        made = moment()
        if pool.take_spare(template, pool.instance_path(spec.name)):
            # Its files keep the spare's older ctimes until changed: a move can start
            # from a spare of the image on the target (storage/baseline.py).
            write_baseline(pool.instance_path(spec.name),
                           Baseline(spec.image, shift_tag(shift), made))
        else:
            pool.create_from_template(spec.name, template, spare=False)
        node.images.render_templates(spec.image, pool.rootfs_path(spec.name), spec.name,
                                     "create", shift)
        write_owner(pool, spec.name, Owner(spec.uid, spec.epoch))
        node.define(spec)
    except Exception:
        _remove(node, spec)
        raise


def _start(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    status = node.status(spec.name, spec.type)
    if status == "Running":
        return
    if status == "Frozen":
        node.driver_for(spec.type).unfreeze(spec.name)
        return
    node.define(spec)
    if not spec.is_vm:
        if not args.get("stateful"):
            node.driver.discard_checkpoint(spec.name)  # LXD: a plain start boots afresh
        elif not node.driver.has_checkpoint(spec.name):
            raise DriverError(f"container {spec.name!r} has no saved state to restore")
    node.driver_for(spec.type).start(spec.name)


def _stop(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    if node.status(spec.name, spec.type) == "Stopped":
        return
    if args.get("stateful"):
        if spec.is_vm:
            raise DriverError("Stateful stop of virtual machines is not supported")
        node.driver.checkpoint(spec.name)
        return
    node.driver_for(spec.type).stop(spec.name, bool(args.get("force")), _timeout(args))


def _timeout(args: dict[str, Any]) -> float:
    timeout = float(args.get("timeout", -1))
    return timeout if timeout > 0 else 30.0


def _restart(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _stop(node, spec, args)
    _start(node, spec, args)


def _freeze(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    status = node.status(spec.name, spec.type)
    if status == "Stopped":  # an error, so the desired state settles on Stopped (LXD refuses)
        raise DriverError(f"The instance {spec.name!r} is not running")
    if status == "Running":
        node.driver_for(spec.type).freeze(spec.name)


def _unfreeze(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    if node.status(spec.name, spec.type) == "Frozen":
        node.driver_for(spec.type).unfreeze(spec.name)


def _update(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    node.define(spec)
    if node.status(spec.name, spec.type) in ("Running", "Frozen"):
        node.driver_for(spec.type).apply_limits(spec.name, spec.config)


def _rename(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    old, new = args["old"], args["new"]
    if spec.is_vm:
        with contextlib.suppress(NotFound):  # a rename retried after it happened
            node.driver_for(spec.type).rename(old, new)
        node.define(spec)
        return
    pool = node.pool(spec.pool)
    if pool.exists(old):
        pool.rename(old, new)
    if (node.paths.containers / old).exists():
        node.driver_for(spec.type).rename(old, new)
    outputs = node.paths.exec_output / old
    if outputs.exists():
        outputs.rename(node.paths.exec_output / new)
    node.define(spec)


def _remove(node: LocalNode, spec: InstanceSpec) -> None:
    shutil.rmtree(node.paths.exec_output / spec.name, ignore_errors=True)
    if node.status(spec.name, spec.type) in ("Running", "Frozen"):
        node.driver_for(spec.type).stop(spec.name, True, 10.0)
    if spec.is_vm:
        with contextlib.suppress(NotFound):  # never defined, or already gone
            node.driver_for(spec.type).delete(spec.name)
        if spec.pool in node.pools:  # a volume whose VM was never defined here
            VmVolumes(node.pools[spec.pool]).delete(spec.name, missing_ok=True)
        return
    if (node.paths.containers / spec.name).exists():
        node.driver_for(spec.type).delete(spec.name)
    pool = node.pools.get(spec.pool)
    if pool is not None and pool.exists(spec.name):
        pool.delete(spec.name)


def _delete(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _remove(node, spec)


class _Snapshots(Protocol):
    """What holds an instance's snapshots: its storage pool, or the VM driver (qcow2
    internal snapshots of the VM's disk)."""

    def list_snapshots(self, name: str) -> list[str]: ...

    def snapshot(self, name: str, snap: str) -> object: ...

    def delete_snapshot(self, name: str, snap: str) -> None: ...

    def rename_snapshot(self, name: str, old: str, new: str) -> None: ...


def _snapshots_of(node: LocalNode, spec: InstanceSpec) -> _Snapshots:
    return _vm_driver(node, spec) if spec.is_vm else node.pool(spec.pool)


def _vm_driver(node: LocalNode, spec: InstanceSpec) -> QemuDriver:
    driver = node.driver_for(spec.type)
    if not isinstance(driver, QemuDriver):
        raise DriverError(f"instance {spec.name!r} is not a virtual machine")
    return driver


def _snapshot(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    store = _snapshots_of(node, spec)
    if args["snapshot"] not in store.list_snapshots(spec.name):
        store.snapshot(spec.name, args["snapshot"])


def _snapshot_delete(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    store = _snapshots_of(node, spec)
    if args["snapshot"] in store.list_snapshots(spec.name):
        store.delete_snapshot(spec.name, args["snapshot"])


def _snapshot_rename(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    store = _snapshots_of(node, spec)
    if args["old"] in store.list_snapshots(spec.name):
        store.rename_snapshot(spec.name, args["old"], args["new"])


def _restore(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    """Restore the snapshot the host has as ``old`` (its rename not yet reported) or as
    ``snapshot``. With ``gone_ok`` (its delete is asked after the restore) a host that
    has it under neither name restored it before a crash, then deleted it."""
    have = _snapshots_of(node, spec).list_snapshots(spec.name)
    snap = next((n for n in (args.get("old"), args["snapshot"]) if n and n in have), "")
    if not snap and args.get("gone_ok"):
        return
    if not snap:
        raise NotFound(f"Snapshot {args['snapshot']!r} of {spec.name!r} not found")
    if spec.is_vm:  # the driver stops, reverts and restarts a running VM itself
        node.define(spec)  # the snapshot's config, effective at the (re)start
        _vm_driver(node, spec).restore_snapshot(spec.name, snap)
        return
    was_running = node.status(spec.name, spec.type) in ("Running", "Frozen")
    if was_running:
        node.driver_for(spec.type).stop(spec.name, True, 10.0)
    node.pool(spec.pool).restore(spec.name, snap)
    node.define(spec)
    if was_running:
        node.driver_for(spec.type).start(spec.name)


_ACTIONS: dict[str, Callable[[LocalNode, InstanceSpec, dict[str, Any]], None]] = {
    "create": _create, "start": _start, "stop": _stop, "restart": _restart,
    "freeze": _freeze, "unfreeze": _unfreeze, "update": _update, "rename": _rename,
    "delete": _delete, "snapshot": _snapshot, "snapshot_delete": _snapshot_delete,
    "snapshot_rename": _snapshot_rename, "restore": _restore,
}
