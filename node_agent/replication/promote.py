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
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from node_agent.drivers.base import DriverError
from node_agent.node import InstanceSpec, LocalNode
from node_agent.replication import volumes
from node_agent.storage.base import StoragePool
from node_agent.volume_owner import Owner, read_owner, write_owner

log = logging.getLogger(__name__)


class NoReplica(DriverError):
    code = 409


def create_from_replica(node: LocalNode, spec: InstanceSpec,
                        remove: Callable[[LocalNode, InstanceSpec], None]) -> str:
    """Make ``spec``'s volume from its newest replica here and define the container;
    the snapshot promoted ("" when the volume was made by an earlier try). ``remove``
    deletes an older copy of the same name (container and volume). Raises NoReplica."""
    pool = node.pool(spec.pool)
    held = volumes.list_replica_snapshots(pool, spec.uid)
    if pool.exists(spec.name):
        owner = read_owner(pool, spec.name)
        ours = owner is None or owner.uid == spec.uid
        if ours and ((owner is not None and owner.epoch == spec.epoch) or not held):
            _finish(node, pool, spec)  # promoted by an earlier try
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
    _finish(node, pool, spec)
    return promoted


def _finish(node: LocalNode, pool: StoragePool, spec: InstanceSpec) -> None:
    write_owner(pool, spec.name, Owner(spec.uid, spec.epoch))
    node.define(spec)
