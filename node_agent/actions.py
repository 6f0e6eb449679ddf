"""Carry out one queued action on the real world (blocking; runs in a thread).

Every action is idempotent: after a crash the agent may perform an action a
second time before its report commits, and that must do no harm.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from typing import Any

from node_agent.drivers.base import DriverError, NotFound
from node_agent.node import InstanceSpec, LocalNode

log = logging.getLogger(__name__)


def perform(node: LocalNode, spec: InstanceSpec, kind: str, args: dict[str, Any]) -> None:
    """Run action ``kind``; raises DriverError (or a storage/image error) on failure."""
    handler = _ACTIONS.get(kind)
    if handler is None:
        raise DriverError(f"Unknown action {kind!r}")
    handler(node, spec, args)


def _create(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    if spec.is_vm:  # the disk is a qcow2 overlay the driver makes on the image's disk
        try:
            node.define(spec)
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
        pool.create_from_template(spec.name, template)
        node.images.render_templates(spec.image, pool.rootfs_path(spec.name), spec.name,
                                     "create", shift)
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
    node.driver_for(spec.type).start(spec.name)


def _stop(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    if node.status(spec.name, spec.type) == "Stopped":
        return
    node.driver_for(spec.type).stop(spec.name, bool(args.get("force")), _timeout(args))


def _timeout(args: dict[str, Any]) -> float:
    timeout = float(args.get("timeout", -1))
    return timeout if timeout > 0 else 30.0


def _restart(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _stop(node, spec, args)
    _start(node, spec, args)


def _freeze(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    if node.status(spec.name, spec.type) == "Running":
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
        return
    if (node.paths.containers / spec.name).exists():
        node.driver_for(spec.type).delete(spec.name)
    pool = node.pools.get(spec.pool)
    if pool is not None and pool.exists(spec.name):
        pool.delete(spec.name)


def _delete(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _remove(node, spec)


def _snapshot(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _no_vm_snapshots(spec)
    pool = node.pool(spec.pool)
    if args["snapshot"] not in pool.list_snapshots(spec.name):
        pool.snapshot(spec.name, args["snapshot"])


def _snapshot_delete(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _no_vm_snapshots(spec)
    pool = node.pool(spec.pool)
    if args["snapshot"] in pool.list_snapshots(spec.name):
        pool.delete_snapshot(spec.name, args["snapshot"])


def _snapshot_rename(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _no_vm_snapshots(spec)
    pool = node.pool(spec.pool)
    if args["old"] in pool.list_snapshots(spec.name):
        pool.rename_snapshot(spec.name, args["old"], args["new"])


def _restore(node: LocalNode, spec: InstanceSpec, args: dict[str, Any]) -> None:
    _no_vm_snapshots(spec)
    was_running = node.status(spec.name, spec.type) in ("Running", "Frozen")
    if was_running:
        node.driver_for(spec.type).stop(spec.name, True, 10.0)
    node.pool(spec.pool).restore(spec.name, args["snapshot"])
    node.define(spec)
    if was_running:
        node.driver_for(spec.type).start(spec.name)


def _no_vm_snapshots(spec: InstanceSpec) -> None:
    if spec.is_vm:
        raise DriverError("Snapshots of virtual machines are not supported yet")


_ACTIONS: dict[str, Callable[[LocalNode, InstanceSpec, dict[str, Any]], None]] = {
    "create": _create, "start": _start, "stop": _stop, "restart": _restart,
    "freeze": _freeze, "unfreeze": _unfreeze, "update": _update, "rename": _rename,
    "delete": _delete, "snapshot": _snapshot, "snapshot_delete": _snapshot_delete,
    "snapshot_rename": _snapshot_rename, "restore": _restore,
}
