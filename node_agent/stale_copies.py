"""What a member keeps of instances that left it: copies to remove, replicas to drop.

A member that comes back after a failover (or that a move's clean-up could not reach)
may still have a container and volume of an instance whose record now lives on another
member; it must never start it again (canonical/lxd#12517), and it is removed, stopped
first if it runs. A holder drops the replicas of instances it no longer holds (another
holder was chosen, or the instance is gone). Both act only on a current desired state:
the agent sweeps once a read barrier has committed after its start (so its replica has
applied everything committed before), then at every resync.

What is never touched: a copy whose record the state does not know (it may be an
instance whose create this member has not yet seen), a copy of an instance that lives
here, is moving here or is held by an intent (a move's controller owns it), and a copy
whose name belongs to an instance of this member. Containers and VMs alike (an HA VM
fails over as a container does). A volume names its instance in its owner file
(``volume_owner``); one without is known by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cluster.state.model import Instance, State
from cluster.state.store import Store
from node_agent.drivers.base import NotFound
from node_agent.node import LocalNode
from node_agent.replication.holding import HeldReplicas
from node_agent.storage.vm_volumes import VmVolumes
from node_agent.volume_owner import read_owner

log = logging.getLogger(__name__)
BARRIER_TIMEOUT = 5.0  # s for the read barrier that says this replica is current
RETRY = 1.0  # s between barriers until one commits


@dataclass(frozen=True)
class LocalCopy:
    """A container or VM this member has: its volume's pool ("" for one defined without
    a volume) and name, and the uid its owner file names ("" if none)."""

    pool: str
    name: str
    uid: str = ""
    vm: bool = False


def _by_uid(state: State) -> dict[str, Instance]:
    return {inst.uid: inst for inst in state.instances.values()}


def copy_is_stale(state: State, member: str, copy: LocalCopy,
                  index: Mapping[str, Instance] | None = None) -> bool:
    """Whether ``copy`` is of an instance whose record lives on another member (and
    nothing here may still need it)."""
    by_uid = _by_uid(state) if index is None else index
    inst = by_uid.get(copy.uid) if copy.uid else state.instances.get(copy.name)
    if inst is None or inst.location == member or inst.moving_to == member or inst.intent:
        return False
    named = state.instances.get(copy.name)
    return named is None or (named.location != member and named.moving_to != member)


def copies_to_drop(state: State, member: str, copies: Iterable[LocalCopy]) -> list[LocalCopy]:
    index = _by_uid(state)
    return [copy for copy in copies if copy_is_stale(state, member, copy, index)]


def replica_is_stale(state: State, member: str, uid: str,
                     index: Mapping[str, Instance] | None = None) -> bool:
    """Whether this member should no longer hold replicas of ``uid``: the instance is
    gone, or lives elsewhere and has not chosen this member as a holder. An instance
    that lives here keeps them (a failover's create promotes one)."""
    inst = (_by_uid(state) if index is None else index).get(uid)
    return inst is None or (inst.location != member and member not in (inst.replicas or {}))


def replicas_to_drop(state: State, member: str,
                     held: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """(pool, uid) of the replicas held (``held``: uids by pool) to drop."""
    index = _by_uid(state)
    return [(pool, uid) for pool, uids in held.items() for uid in uids
            if replica_is_stale(state, member, uid, index)]


def local_copies(node: LocalNode) -> list[LocalCopy]:
    """The containers and VMs this member has, with their volumes' owners (blocking)."""
    found: list[LocalCopy] = []
    for pool_name, pool in node.pools.items():
        for name in pool.list_instances():
            owner = read_owner(pool, name)
            found.append(LocalCopy(pool_name, name, owner.uid if owner else ""))
    with_volume = {copy.name for copy in found}
    found.extend(LocalCopy("", name) for name in node.driver.names() if name not in with_volume)
    vms: list[LocalCopy] = []
    for pool_name, pool in node.pools.items():
        volumes = VmVolumes(pool)
        for name in _names(pool.path / "virtual-machines"):  # as vm_volume_path
            owner = read_owner(volumes, name)
            vms.append(LocalCopy(pool_name, name, owner.uid if owner else "", vm=True))
    with_volume = {copy.name for copy in vms}
    driver = node.vm_driver
    names = driver.names() if driver is not None else []
    vms.extend(LocalCopy("", name, vm=True) for name in names if name not in with_volume)
    return found + vms


def remove_copy(node: LocalNode, copy: LocalCopy) -> None:
    """Stop the container or VM if it runs, then delete it and its volume (blocking)."""
    kind = "virtual-machine" if copy.vm else "container"
    if node.status(copy.name, kind) in ("Running", "Frozen"):
        node.driver_for(kind).stop(copy.name, True, 10.0)
    if copy.vm:
        with contextlib.suppress(NotFound):  # a volume whose VM is not defined here
            node.qemu().delete(copy.name)
        if copy.pool in node.pools:
            VmVolumes(node.pools[copy.pool]).delete(copy.name, missing_ok=True)
    else:
        if (node.paths.containers / copy.name).exists():
            node.driver.delete(copy.name)
        if copy.pool in node.pools:
            node.pools[copy.pool].delete(copy.name, missing_ok=True)
    shutil.rmtree(node.paths.exec_output / copy.name, ignore_errors=True)


def _names(directory: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory)
                      if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


async def sweep(node: LocalNode, store: Store, member: str, replicas: HeldReplicas) -> None:
    """Remove the stale copies and drop the stale replicas on this member now. Each is
    checked again on the state right before it goes; a failure is logged and the next
    sweep tries again."""
    copies = await asyncio.to_thread(local_copies, node)
    with store.read() as state:
        stale = copies_to_drop(state, member, copies)
    for copy in stale:
        def remove(copy: LocalCopy = copy) -> bool:
            with store.read() as state:
                if not copy_is_stale(state, member, copy):
                    return False
            remove_copy(node, copy)
            return True

        try:
            if await asyncio.to_thread(remove):
                log.warning("removed %s %s: its instance lives on another member now",
                            "VM" if copy.vm else "container", copy.name)
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.error("removing the stale copy of %s failed: %s", copy.name, exc)
    held = await replicas.uids()
    with store.read() as state:
        dropped = replicas_to_drop(state, member, held)
    for pool, uid in dropped:
        def still_stale(uid: str = uid) -> bool:
            with store.read() as state:
                return replica_is_stale(state, member, uid)

        try:
            if await replicas.drop_if(pool, uid, still_stale):
                log.info("dropped the replicas of %s: this member no longer holds them", uid)
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.error("dropping the replicas of %s failed: %s", uid, exc)


class Sweeper:
    """Runs ``sweep`` in the background, one at a time, and only once this agent's
    replica has caught up: the first sweep waits for a read barrier to commit (retried
    every ``RETRY`` s), which also sets ``caught_up``."""

    def __init__(self, node: LocalNode, store: Store, member: Callable[[], str],
                 replicas: HeldReplicas) -> None:
        self._node, self._store, self._member, self._replicas = node, store, member, replicas
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def soon(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        said = False
        while not self.caught_up.is_set():
            try:
                await self._store.read_barrier(BARRIER_TIMEOUT)
                self.caught_up.set()
            except Exception as exc:  # noqa: BLE001 - no quorum yet: try again
                if not said:
                    log.info("not caught up with the cluster yet (%s): the sweep of stale "
                             "copies and replicas waits", exc)
                    said = True
                await asyncio.sleep(RETRY)
        try:
            await sweep(self._node, self._store, self._member(), self._replicas)
        except Exception as exc:  # noqa: BLE001 - the next resync sweeps again
            log.error("sweeping stale copies and replicas failed: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
