"""A failover's create step on its new member: the newest complete replica held here
becomes the instance's volume (blocking; ``actions.perform`` runs it in a thread).

A failed-over instance is a pet with data: it is never made again from its image. With
no replica here the step fails with a clear error, and apply keeps the record (the next
failover or the operator acts). The step is idempotent across a crash: promoting
consumes the replica, and the volume it became is recognised by its owner file
(``volume_owner``: this uid under the current placement epoch) or, were the crash right
after the promote, by the replica being gone. A copy this member kept from an earlier
stay (it failed over away and back, and its sweep has not dropped it yet) is older than
the replica: it is removed and the replica promoted.

A VM's replica becomes its volume directory (a whole ``root.qcow2`` with no backing
file, and its UEFI variable store if it has one) and the VM is defined on it: the QEMU
driver runs that disk as it is, and the image only lends its kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from node_agent.drivers.base import DriverError
from node_agent.node import InstanceSpec, LocalNode
from node_agent.replication import volumes
from node_agent.storage.vm_volumes import VmVolumes
from node_agent.volume_owner import Layout, Owner, read_owner, write_owner

log = logging.getLogger(__name__)


class NoReplica(DriverError):
    code = 409


def create_from_replica(node: LocalNode, spec: InstanceSpec,
                        remove: Callable[[LocalNode, InstanceSpec], None]) -> str:
    """Make ``spec``'s volume from its newest replica here and define the container or
    VM; the snapshot promoted ("" when the volume was made by an earlier try). ``remove``
    deletes an older copy of the same name (instance and volume). Raises NoReplica."""
    pool = node.pool(spec.pool)
    layout: _Volumes = VmVolumes(pool) if spec.is_vm else pool
    held = volumes.list_replica_snapshots(pool, spec.uid)
    if layout.exists(spec.name):
        owner = read_owner(layout, spec.name)
        ours = owner is None or owner.uid == spec.uid
        if ours and ((owner is not None and owner.epoch == spec.epoch) or not held):
            _finish(node, layout, spec)  # promoted by an earlier try
            return ""
        if not held:
            raise NoReplica(f"Instance {spec.name}: the volume here belongs to another "
                            f"instance ({owner.uid if owner else '?'}) and no replica of "
                            f"it is held on this member")
        log.warning("%s: dropping the copy kept here from before (owner %s) for its newer "
                    "replica %s", spec.name, owner, held[-1])
        remove(node, spec)
    if not held:
        raise NoReplica(f"Instance {spec.name} failed over to this member but no complete "
                        f"replica of it is here: it is started from its replica, never "
                        f"made again from its image")
    promoted = volumes.promote_replica(pool, spec.uid, None, spec.name)
    log.info("%s: promoted replica %s (failover asked for %s or newer)", spec.name,
             promoted, spec.from_replica)
    _finish(node, layout, spec)
    return promoted


class _Volumes(Layout, Protocol):
    """Where the instance's volume is: the pool (a container's) or ``VmVolumes``."""

    def exists(self, name: str) -> bool: ...


def _finish(node: LocalNode, layout: _Volumes, spec: InstanceSpec) -> None:
    write_owner(layout, spec.name, Owner(spec.uid, spec.epoch))
    node.define(spec)
