"""The shipper: this member's HA instances, replicated to their holders.

::

    every TICK s: local HA instances (plan.local_sources) -> plan.due -> one task each
      task: GET  https://<holder>/internal/ha-replicas/<uid>      what the holder has
            parent = the holder's newest snapshot (plan.parent_for), else whole
            PUT  https://<holder>/internal/ha-replicas/<uid>?...  volumes.send_replica
            commit instance.replica_synced                         (apply re-checks)

The holder admits a stream only from the instance's member under its current placement
epoch (``cluster/api/handlers/ha_replicas.py``) and apply admits the report only then too,
so a source that a failover fenced off can neither overwrite a replica nor claim one.
``synced_at`` is the moment the snapshot's name records (taken before the source began
reading): everything written before it is in the replica.

A VM's replica is its disk, copied by QEMU's backup job with a dirty bitmap per
snapshot (``vm.py``): the same shipment, another payload.

A member that fenced itself (``fenced()``, the node agent's fencing hook) ships nothing.
One shipment per (instance, holder) runs at a time; a failure is logged and the pair is
tried again one interval after the failed try began. Blocking pool calls run in threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import aiohttp

from cluster.state.commands import command
from cluster.state.store import Store
from cluster.transport.peers import PeerClient
from node_agent.node import LocalNode
from node_agent.replication import plan, volumes
from node_agent.replication.names import is_snapshot_name, moment_ns, new_snapshot_name

log = logging.getLogger(__name__)
TICK = 1.0  # s between looks at what is due
LIST_TIMEOUT = 30.0
SHIP_TIMEOUT = aiohttp.ClientTimeout(total=1800.0, sock_connect=10.0)
FORWARDED = {"X-Corral-Forwarded": "1"}
QUEUED_CHUNKS = 8  # between the pool's stream and the request body (backpressure)
T = TypeVar("T")


class ShipmentFailed(Exception):
    """The holder refused or failed a shipment; the message says why."""


def never_fenced() -> bool:
    """The fencing hook's default: a member without a fencing lease is never fenced."""
    return False


class Shipper:
    """Ships this member's HA instances to their replica holders, until closed."""

    def __init__(self, member: Callable[[], str], store: Store, node: LocalNode,
                 fenced: Callable[[], bool] = never_fenced) -> None:
        self._member = member
        self._store = store
        self._node = node
        self._fenced = fenced
        self._peers: PeerClient | None = None  # made at the first shipment, closed at the end
        self._began: dict[plan.Key, float] = {}
        self._running: dict[plan.Key, asyncio.Task[None]] = {}
        self._errors: dict[plan.Key, str] = {}

    async def run(self) -> None:
        """Look every TICK s; on cancellation stop every shipment and wait for it."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.tick(loop.time())
                await asyncio.sleep(TICK)
        finally:
            tasks = list(self._running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._peers is not None:
                await self._peers.close()

    def tick(self, now: float) -> list[plan.Shipment]:
        """Start the shipments due at ``now`` (the loop's clock); those started."""
        if self._fenced():
            return []
        with self._store.read() as state:
            sources = plan.local_sources(state, self._member())
        self._began = plan.still_wanted(self._began, sources)
        started = plan.due(sources, self._began, self._running.keys(), now)
        for shipment in started:
            key = shipment.key
            self._began[key] = now
            task = asyncio.create_task(self._ship_logged(shipment))
            self._running[key] = task
            task.add_done_callback(partial(self._ended, key))
        return started

    def _ended(self, key: plan.Key, _: asyncio.Task[None]) -> None:
        self._running.pop(key, None)

    async def _ship_logged(self, shipment: plan.Shipment) -> None:
        key = shipment.key
        try:
            await self.ship(shipment)
            self._errors.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - tried again at the next interval
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            level = logging.DEBUG if self._errors.get(key) == message else logging.WARNING
            self._errors[key] = message
            log.log(level, "shipping a replica of %s to %s failed: %s", shipment.source.name,
                    shipment.holder, message)

    async def ship(self, shipment: plan.Shipment) -> None:
        """One shipment: the holder's list, the stream, the report. Raises on failure."""
        source, holder = shipment.source, shipment.holder
        address = self._address(holder)
        url = f"https://{address}/internal/ha-replicas/{source.uid}"
        pool = self._node.pool(source.pool)
        vm = self._node.qemu() if source.vm else None  # DriverError if QEMU is not here
        held = await self._held(url)
        parent = plan.parent_for(held)
        snapshot = new_snapshot_name(held)
        if self._fenced():
            return
        params = {"snapshot": snapshot, "parent": parent or "", "source": self._member(),
                  "placement_epoch": str(source.epoch)}

        async def produce(write: Callable[[bytes], Awaitable[None]]) -> volumes.ReplicaSent:
            return await volumes.send_replica(pool, source.name, source.uid, parent, write,
                                              snapshot=snapshot, vm=vm)

        result = await put_stream(self._session(), url, params, produce)
        await self._store.submit(command(
            "instance.replica_synced", uid=source.uid, member=holder, source=self._member(),
            placement_epoch=source.epoch, snapshot=result.snapshot,
            synced_at=moment_ns(result.snapshot) / 1e9, bytes=result.bytes))
        log.debug("shipped %s of %s to %s (%s, %d bytes)", result.snapshot, source.name,
                  holder, "whole" if result.full else f"delta on {parent}", result.bytes)

    def _address(self, holder: str) -> str:
        with self._store.read() as state:
            member = state.members.get(holder)
            address = member.address if member is not None else ""
        if not address:
            raise ShipmentFailed(f"holder {holder} has no address")
        return address

    def _session(self, timeout: float = LIST_TIMEOUT) -> Any:
        """The pooled mutual-TLS session (``PeerClient``), telling the holder this
        member's commit index: it applies that much before it checks the shipment."""
        if self._peers is None:
            self._peers = PeerClient(self._node.paths.root)
        return self._peers.session(timeout, applied=self._store.commit_index())

    async def _held(self, url: str) -> list[str]:
        """The holder's complete snapshots of the instance (valid names only)."""
        async with self._session().get(url, headers=FORWARDED) as resp:
            doc = await resp.json(content_type=None)
            if resp.status != 200:
                raise ShipmentFailed(f"the holder answered {resp.status}: {doc.get('error')}")
        snapshots = (doc.get("metadata") or {}).get("snapshots", [])
        return [s for s in snapshots if is_snapshot_name(s)]



async def put_stream(session: Any, url: str, params: dict[str, str],
                     produce: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[T]],
                     timeout: aiohttp.ClientTimeout = SHIP_TIMEOUT) -> T:
    """PUT what ``produce`` writes to ``url`` as a chunked body, through ``session``
    (``request(method, url, ...)``, as aiohttp's or a ``PeerSession``); the producer's
    result once the receiver answered 200. A failing producer cuts the body short (no
    terminating chunk: the receiver keeps nothing); a receiver that answers early, or
    the caller's cancellation, stops the producer. ShipmentFailed says why it failed."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUED_CHUNKS)

    async def producer() -> T:
        try:
            result = await produce(queue.put)
        except Exception as exc:
            await queue.put(exc)
            raise
        await queue.put(None)
        return result

    async def body() -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise ShipmentFailed(f"the source failed: {item}") from item
            yield item

    task = asyncio.create_task(producer())
    try:
        async with session.request("PUT", url, params=params, data=body(), headers=FORWARDED,
                                   timeout=timeout) as resp:
            doc = await resp.json(content_type=None)
            if resp.status != 200:
                raise ShipmentFailed(f"the holder refused ({resp.status}): "
                                     f"{doc.get('error')}")
        return await task
    except Exception as exc:
        cause = task.exception() if task.done() and not task.cancelled() else None
        if cause is not None and cause is not exc:  # the source's failure cut the body
            raise ShipmentFailed(f"the source failed: {cause}") from cause
        raise
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
