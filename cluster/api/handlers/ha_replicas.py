"""``/internal/ha-replicas/<uid>``: the member that runs an HA instance ships replica
snapshots of its root volume to the instance's replica holders (node_agent/replication/
shipper.py). Members only (the ``MEMBER`` route policy, ``cluster/api/app.py``).

- ``GET``: the complete snapshots of the instance this member holds, oldest first (the
  source picks the parent of its next delta among them).
- ``PUT ?snapshot=&parent=&source=&placement_epoch=`` with the replica stream as body.
  Before a byte is read, on fresh state (a read barrier through the Raft log): the
  instance exists, lives on ``source`` under ``placement_epoch`` and has this member
  among its holders (``ha.shipment_problem``), else 409 with the reason. A source fenced
  by a failover (another member, a raised epoch) can therefore never overwrite anything;
  the same check runs again before every chunk is passed on, so a failover committed
  while a stream runs leaves nothing of it here.

What is done to the pools is ``node_agent/replication``'s, reached through the host
facade (``ctx.host.replicas``). A holder of a VM's replica fetches the VM's image first
if it lacks it: a VM promoted there boots from the image's kernel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.response import ApiError, sync
from cluster.state.errors import Unavailable
from cluster.state.ha import shipment_problem
from cluster.transport import peers
from node_agent.facade import is_replica_snapshot

FRESH_TIMEOUT = 5.0  # s the holder waits to confirm its state is current
IDLE_TIMEOUT = 120.0  # s without a byte before a stream counts as cut (its host is gone)


@dataclass(frozen=True)
class Offer:
    """What a PUT says it carries, and from whom."""

    uid: str
    snapshot: str
    parent: str | None
    source: str
    placement_epoch: int


def parse_offer(uid: str, query: dict[str, str]) -> Offer:
    """The PUT's query as an ``Offer``; ApiError 400 if a field is missing or malformed."""
    snapshot, parent = query.get("snapshot", ""), query.get("parent", "")
    source, epoch = query.get("source", ""), query.get("placement_epoch", "")
    if not is_replica_snapshot(snapshot):
        raise ApiError(400, f"Invalid replica snapshot name {snapshot!r}")
    if parent and not is_replica_snapshot(parent):
        raise ApiError(400, f"Invalid parent snapshot name {parent!r}")
    if not source:
        raise ApiError(400, "The source member is required")
    if not epoch.isdigit():
        raise ApiError(400, f"Invalid placement epoch {epoch!r}")
    return Offer(uid, snapshot, parent or None, source, int(epoch))


def _admit(ctx: Context, offer: Offer) -> tuple[str, str, str]:
    """(instance name, pool of its root volume, its image if it is a VM) if this member
    may take ``offer`` now, on this member's replica; ApiError 404 or 409 with the
    reason otherwise."""
    with ctx.store.read() as state:
        inst = state.instance_by_uid(offer.uid)
        if inst is None:
            raise ApiError(404, "Instance not found")
        problem = shipment_problem(inst, ctx.member, offer.source, offer.placement_epoch)
        if problem:
            raise ApiError(409, problem)
        spec = ctx.host.spec_of(state, inst)
        return inst.name, spec.pool, spec.image if spec.is_vm else ""


def _still(ctx: Context, offer: Offer, name: str) -> None:
    """``_admit`` again during the stream, by name (O(1)): 409 once a failover, a holder
    change or a rename has been applied here."""
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None or inst.uid != offer.uid:
            problem = f"Instance {name} was renamed or deleted meanwhile"
        else:
            problem = shipment_problem(inst, ctx.member, offer.source, offer.placement_epoch)
    if problem:
        raise ApiError(409, problem)


async def held(request: web.Request) -> web.Response:
    """GET: the complete replica snapshots of the instance held here, oldest first."""
    ctx = ctx_of(request)
    uid = request.match_info["uid"]
    with ctx.store.read() as state:
        inst = state.instance_by_uid(uid)
        if inst is None:
            raise ApiError(404, "Instance not found")
        pool = ctx.host.spec_of(state, inst).pool
    return sync({"member": ctx.member,
                 "snapshots": await ctx.host.replicas.snapshots(pool, uid)})


async def receive(request: web.Request) -> web.Response:
    """PUT: keep the streamed snapshot once it has arrived whole; ``{"snapshot",
    "bytes"}``. 409 (before any byte is read) unless the sender may ship it here now."""
    ctx = ctx_of(request)
    offer = parse_offer(request.match_info["uid"], dict(request.query))
    try:
        await ctx.store.read_barrier(FRESH_TIMEOUT)
    except Unavailable as exc:
        raise ApiError(503, f"Cannot confirm this member's state is current: {exc}") from exc
    name, pool, vm_image = _admit(ctx, offer)

    async def chunks() -> AsyncIterator[bytes]:
        stream = request.content.iter_chunked(peers.CHUNK).__aiter__()
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):  # a source host that vanished
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise ApiError(408, f"The source sent nothing for {IDLE_TIMEOUT:g} s") from exc
            _still(ctx, offer, name)  # a failover meanwhile: nothing of it is kept
            yield chunk

    received = await ctx.host.replicas.receive(pool, offer.uid, offer.parent,
                                               offer.snapshot, chunks(), vm_image)
    return sync({"snapshot": offer.snapshot, "bytes": received})


ROUTES = [
    ("GET", "/internal/ha-replicas/{uid}", held),
    ("PUT", "/internal/ha-replicas/{uid}", receive),
]
