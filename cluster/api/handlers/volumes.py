"""``/internal/instances/<name>/volume``: members hand an instance's volume to each other
during a move, over the cluster's mutual TLS. Only a peer presenting the cluster
certificate may call these (the ``MEMBER`` route policy, ``cluster/api/app.py``), and
each call is checked against the replicated state: a volume is sent only while a move of
that very instance (by uid) is under way, is received only by the move's target, and is
deleted only where the instance no longer lives.

These handlers check and carry bytes between members; what is done to the pools is
``node_agent/volume_moves.py``'s, reached through the host facade (``ctx.host.volumes``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

from aiohttp import web

from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of, until_replica
from cluster.api.response import ApiError, empty
from cluster.state.model import Instance
from cluster.transport import peers
from node_agent.facade import InstanceSpec

FORWARDED = {"X-Corral-Forwarded": "1"}
PRECOPY_TIME = "X-Corral-Precopy-Time"
LISTING_TIME = "X-Corral-Listing-Time"  # a moment before the listing's walk began
BASELINE = "X-Corral-Baseline"  # image:shift of the volume's baseline (storage/baseline.py)


class SourceFailed(Exception):
    """The source member refused to send (the receiver reports it on its error line)."""


def _instance(ctx: Context, request: web.Request) -> tuple[Instance, InstanceSpec]:
    """The instance (a copy) and its spec; 404 unless its uid is the one asked for."""
    name, uid = request.match_info["name"], request.query.get("uid", "")
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None or inst.uid != uid:
            raise ApiError(404, "Instance not found")
        spec = ctx.host.spec_of(state, inst)
        found = dataclasses.replace(inst)
    ctx.host.volumes.holder(spec)  # DriverError if its pool is not on this member
    return found, spec


async def send(request: web.Request) -> web.StreamResponse:
    """GET: the volume as a tar stream, from the member it lives on, during its move;
    ``?precopy=1``: the whole volume of a running container before its move (header
    PRECOPY_TIME: when it began, on this member's clock; ``&baseline=TAG&listed=T``:
    only what a spare of its image lacks, on a spare pruned to the listing of T);
    ``?since=T``: only what changed since the pre-copy that began at T; ``?listing=1``:
    its paths (``transfer.volume_listing``; header LISTING_TIME)."""
    ctx = ctx_of(request)
    volumes = ctx.host.volumes
    precopy = bool(request.query.get("precopy"))
    if not precopy:
        await until_replica(lambda: bool(_instance(ctx, request)[0].moving_to))
    inst, spec = _instance(ctx, request)
    if inst.location != ctx.member or not (inst.moving_to or precopy):
        raise ApiError(409, "This instance is not being moved away from this member")
    if request.query.get("listing"):
        walked = volumes.moment()
        listing = await volumes.listing(spec)
        headers = {LISTING_TIME: f"{walked:.6f}"}
        if listing.baseline:
            headers[BASELINE] = listing.baseline
        return web.Response(body=listing.paths, content_type="application/octet-stream",
                            headers=headers)
    try:
        since = float(request.query["since"]) if "since" in request.query else None
        listed = float(request.query["listed"]) if "listed" in request.query else None
    except ValueError as exc:
        raise ApiError(400, "Invalid since or listed") from exc
    began = volumes.moment()  # a file changed just before the pre-copy began is sent again
    if precopy and listed is not None:
        # The spare was pruned to that listing: what changed since counts as changed
        # (a directory moved away and back meanwhile lost its files there).
        began = min(began, listed)
    response = web.StreamResponse(headers={"Content-Type": "application/x-tar",
                                           PRECOPY_TIME: f"{began:.6f}"})
    await response.prepare(request)
    baseline = request.query.get("baseline", "") if precopy else ""
    if not await volumes.send(spec, response.write, began, precopy=precopy,
                              baseline=baseline, since=None if precopy else since):
        if request.transport is not None:
            request.transport.abort()  # a short stream: the receiver's tar fails
        return response
    await response.write_eof()
    return response


async def receive(request: web.Request) -> web.StreamResponse:
    """POST ?source=ADDR: pull the volume from the member at ADDR into this member's pool.
    Answers with progress lines (JSON) and a last line ``{"done": bytes}`` or ``{"error"}``."""
    ctx = ctx_of(request)
    volumes = ctx.host.volumes
    if not request.query.get("precopy"):
        await until_replica(lambda: _instance(ctx, request)[0].moving_to == ctx.member)
    inst, spec = _instance(ctx, request)
    source = request.query.get("source", "")
    if request.query.get("precopy"):
        return await _precopy(ctx, inst, spec, source)
    if inst.moving_to != ctx.member or not source:
        raise ApiError(409, "This instance is not being moved to this member")
    since = request.query.get("since")
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    last = [0]

    async def report(done: int) -> None:
        if done - last[0] >= 4 << 20:
            last[0] = done
            await response.write(json.dumps({"bytes": done}).encode() + b"\n")

    try:
        async with ctx.peer_session() as session:
            url = f"https://{source}/internal/instances/{inst.name}/volume?uid={inst.uid}"
            precopied, made = None, None
            if since is not None:  # a delta on top of this move's pre-copy
                made = await volumes.precopy_began(spec)
                async with session.get(f"{url}&listing=1", headers=FORWARDED) as listed:
                    if listed.status != 200:
                        raise SourceFailed(f"the source member answered {listed.status}")
                    precopied = (inst.uid, await listed.read())
                url += f"&since={float(since):.6f}"
            async with session.get(url, headers=FORWARDED) as upstream:
                if upstream.status != 200:
                    raise SourceFailed(f"the source member answered {upstream.status}")
                progress: list[int] = []

                async def chunks() -> AsyncIterator[bytes]:
                    async for chunk in upstream.content.iter_chunked(peers.CHUNK):
                        yield chunk
                        progress.append(len(chunk))
                        await report(sum(progress))

                received = await volumes.receive(spec, chunks(), precopied, made)
        await response.write(json.dumps({"done": received}).encode() + b"\n")
    except Exception as exc:  # noqa: BLE001 - the orchestrator reads the error line
        await response.write(json.dumps({"error": str(exc) or type(exc).__name__}).encode()
                             + b"\n")
    await response.write_eof()
    return response


async def _precopy(ctx: Context, inst: Instance, spec: InstanceSpec,
                   source: str) -> web.Response:
    """POST ?precopy=1&source=ADDR: copy a running container's volume from ADDR before
    its move begins; answers ``{"since": T}`` for the move's delta."""
    if inst.type != "container" or inst.location == ctx.member or inst.moving_to or not source:
        raise ApiError(409, "Only a container living on another member is pre-copied")
    volumes = ctx.host.volumes
    made = volumes.moment()
    await volumes.start_precopy(spec)
    url = (f"https://{source}/internal/instances/{inst.name}/volume?uid={inst.uid}"
           f"&precopy=1")
    try:
        async with ctx.peer_session() as session:
            listing: bytes | None = None
            baseline, listed_at = "", ""
            # The source walks the whole volume for its listing: worth it only if a spare
            # here could stand in for the files the volume has from its image.
            if await volumes.spare_ready(spec):
                async with session.get(f"{url}&listing=1", headers=FORWARDED) as listed:
                    if listed.status != 200:
                        raise ApiError(502, f"the source member answered {listed.status}")
                    listing = await listed.read()
                    baseline = listed.headers.get(BASELINE, "")
                    listed_at = listed.headers.get(LISTING_TIME, "")
            # Only a volume made from a spare has files a spare here can stand in for;
            # untarring over a spare is slower than into an empty directory.
            spare = (baseline == volumes.baseline_tag(spec) and bool(listed_at)
                     and await volumes.base_on_spare(spec))
            if spare:
                url += f"&baseline={baseline}&listed={listed_at}"
            else:
                listing = None
            async with session.get(url, headers=FORWARDED) as upstream:
                if upstream.status != 200:
                    raise ApiError(502, f"the source member answered {upstream.status}")
                began = float(upstream.headers[PRECOPY_TIME])
                await volumes.precopy(spec, upstream.content.iter_chunked(peers.CHUNK),
                                      listing)
        if spare:  # else every file is new: no baseline for the next move
            await volumes.record_precopy_began(spec, made)
    except BaseException:
        await volumes.discard_precopy(spec)
        raise
    return web.json_response({"since": began, "spare": spare})


async def delete(request: web.Request) -> web.Response:
    """DELETE: drop this member's copy, never that of an instance that lives here; with
    ``?incoming=1`` (a failed move cleaning up) only a copy this move received."""
    ctx = ctx_of(request)
    volumes = ctx.host.volumes
    if not request.query.get("incoming"):  # the source's copy, once the move has ended
        await until_replica(lambda: _instance(ctx, request)[0].location != ctx.member)
    inst, spec = _instance(ctx, request)
    if request.query.get("incoming"):
        await volumes.discard_precopy(spec)
    if inst.location == ctx.member:
        raise ApiError(409, "The instance lives on this member; its volume stays")
    if request.query.get("incoming") and not await volumes.received_by_this_move(spec):
        raise ApiError(409, "This member's volume of that name did not come from this move")
    await volumes.drop(spec)
    return empty()


ROUTES = [
    ("GET", "/internal/instances/{name}/volume", send),
    ("POST", "/internal/instances/{name}/volume", receive),
    ("DELETE", "/internal/instances/{name}/volume", delete),
]
