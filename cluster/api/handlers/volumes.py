"""``/internal/instances/<name>/volume``: members hand an instance's volume to each other
during a move, over the cluster's mutual TLS. Only a peer presenting the cluster
certificate may call these (the ``MEMBER`` route policy, ``cluster/api/app.py``), and each call is checked against the replicated state:
a volume is sent only while a move of that very instance (by uid) is under way, is
received only by the move's target, and is deleted only where the instance no longer
lives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from aiohttp import web

from cluster import peers
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of, until_replica
from cluster.api.response import ApiError, empty
from cluster.state.model import Instance
from node_agent.agent import NodeAgent
from node_agent.drivers.base import NotFound
from node_agent.node import InstanceSpec
from node_agent.storage.baseline import (
    Baseline,
    clear_baseline,
    moment,
    read_baseline,
    shift_tag,
    write_baseline,
)
from node_agent.storage.dir import DirPool
from node_agent.storage.errors import StorageError
from node_agent.storage.transfer import (
    VolumeHolder,
    discard_precopy,
    precopy_dir,
    precopy_volume,
    receive_volume,
    send_volume,
    start_precopy,
    volume_listing,
)
from node_agent.storage.vm_volumes import VmVolumes

FORWARDED = {"X-Corral-Forwarded": "1"}
PRECOPY_TIME = "X-Corral-Precopy-Time"
BASELINE = "X-Corral-Baseline"  # image:shift of the volume's baseline (storage/baseline.py)


def _instance(ctx: Context, request: web.Request,
              ) -> tuple[Instance, InstanceSpec, VolumeHolder]:
    """The instance (a copy), its spec and what holds its volume here: its storage pool,
    or for a VM the VM volumes of that pool."""
    name, uid = request.match_info["name"], request.query.get("uid", "")
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None or inst.uid != uid:
            raise ApiError(404, "Instance not found")
        spec = NodeAgent._spec_of(state, inst)
        found = Instance(**{**inst.__dict__})
    pool = ctx.node.pool(spec.pool)
    return found, spec, VmVolumes(pool) if spec.is_vm else pool


async def send(request: web.Request) -> web.StreamResponse:
    """GET: the volume as a tar stream, from the member it lives on, during its move;
    ``?precopy=1``: the whole volume of a running container before its move (header
    PRECOPY_TIME: when it began, on this member's clock); ``?newer=T``: only what
    changed since T; ``?listing=1``: its paths (``transfer.volume_listing``)."""
    ctx = ctx_of(request)
    precopy = bool(request.query.get("precopy"))
    if not precopy:
        await until_replica(lambda: bool(_instance(ctx, request)[0].moving_to))
    inst, _, pool = _instance(ctx, request)
    if inst.location != ctx.member or not (inst.moving_to or precopy):
        raise ApiError(409, "This instance is not being moved away from this member")
    if request.query.get("listing"):
        listing = await asyncio.to_thread(volume_listing, pool, inst.name)
        baseline = await asyncio.to_thread(read_baseline, pool.instance_path(inst.name))
        headers = {} if baseline is None else {BASELINE: f"{baseline.image}:{baseline.shift}"}
        return web.Response(body=listing, content_type="application/octet-stream",
                            headers=headers)
    try:
        newer = float(request.query["newer"]) if "newer" in request.query else None
    except ValueError as exc:
        raise ApiError(400, "Invalid newer") from exc
    if precopy and "baseline" in request.query:  # the receiver starts from a spare
        image, _, shift = request.query["baseline"].partition(":")
        baseline = await asyncio.to_thread(read_baseline, pool.instance_path(inst.name))
        if baseline is not None and baseline.matches(image, shift):
            newer = baseline.since
    began = moment()  # a file changed just before the pre-copy began is sent again
    response = web.StreamResponse(headers={"Content-Type": "application/x-tar",
                                           PRECOPY_TIME: f"{began:.6f}"})
    await response.prepare(request)
    try:
        await send_volume(pool, inst.name, response.write, newer)
    except (StorageError, OSError):
        if request.transport is not None:
            request.transport.abort()  # a short stream: the receiver's tar fails
        return response
    await response.write_eof()
    return response


async def receive(request: web.Request) -> web.StreamResponse:
    """POST ?source=ADDR: pull the volume from the member at ADDR into this member's pool.
    Answers with progress lines (JSON) and a last line ``{"done": bytes}`` or ``{"error"}``."""
    ctx = ctx_of(request)
    if not request.query.get("precopy"):
        await until_replica(lambda: _instance(ctx, request)[0].moving_to == ctx.member)
    inst, spec, pool = _instance(ctx, request)
    source = request.query.get("source", "")
    if request.query.get("precopy"):
        return await _precopy(ctx, inst, spec, pool, source)
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
                made = await asyncio.to_thread(_precopy_began, pool, inst.uid)
                async with session.get(f"{url}&listing=1", headers=FORWARDED) as listed:
                    if listed.status != 200:
                        raise StorageError(f"the source member answered {listed.status}")
                    precopied = (inst.uid, await listed.read())
                url += f"&newer={float(since):.6f}"
            async with session.get(url, headers=FORWARDED) as upstream:
                if upstream.status != 200:
                    raise StorageError(f"the source member answered {upstream.status}")
                progress: list[int] = []

                async def chunks() -> AsyncIterator[bytes]:
                    async for chunk in upstream.content.iter_chunked(peers.CHUNK):
                        yield chunk
                        progress.append(len(chunk))
                        await report(sum(progress))

                if inst.type == "virtual-machine":  # its disk is an overlay on the image
                    await ctx.agent.ensure_image(inst.image)
                received = await receive_volume(pool, inst.name, chunks(),
                                                precopied=precopied)
                await asyncio.to_thread(_mark, pool, inst)
                if made is not None:  # its pre-copy started from a spare
                    await asyncio.to_thread(
                        write_baseline, pool.instance_path(inst.name),
                        Baseline(spec.image, shift_tag(ctx.node.uid_shift(spec)), made))
                elif not spec.is_vm:
                    await asyncio.to_thread(clear_baseline, pool.instance_path(inst.name))
                if spec.is_vm:  # its spec here, its disk repointed at this member's image
                    await asyncio.to_thread(ctx.node.define, spec)
        await response.write(json.dumps({"done": received}).encode() + b"\n")
    except Exception as exc:  # noqa: BLE001 - the orchestrator reads the error line
        await response.write(json.dumps({"error": str(exc) or type(exc).__name__}).encode()
                             + b"\n")
    await response.write_eof()
    return response


async def _precopy(ctx: Context, inst: Instance, spec: InstanceSpec, pool: VolumeHolder,
                   source: str) -> web.Response:
    """POST ?precopy=1&source=ADDR: copy a running container's volume from ADDR before
    its move begins; answers ``{"since": T}`` for the move's delta."""
    if inst.type != "container" or inst.location == ctx.member or inst.moving_to or not source:
        raise ApiError(409, "Only a container living on another member is pre-copied")
    made = moment()
    await asyncio.to_thread(start_precopy, pool, inst.uid)
    url = (f"https://{source}/internal/instances/{inst.name}/volume?uid={inst.uid}"
           f"&precopy=1")
    try:
        async with ctx.peer_session() as session:
            listing: bytes | None = None
            baseline = ""
            # The source walks the whole volume for its listing: worth it only if a spare
            # here could stand in for the files the volume has from its image.
            if await asyncio.to_thread(_spare_ready, ctx, spec, pool):
                async with session.get(f"{url}&listing=1", headers=FORWARDED) as listed:
                    if listed.status != 200:
                        raise ApiError(502, f"the source member answered {listed.status}")
                    listing = await listed.read()
                    baseline = listed.headers.get(BASELINE, "")
            # Only a volume made from a spare has files a spare here can stand in for;
            # untarring over a spare is slower than into an empty directory.
            shift = None
            if baseline == f"{spec.image}:{shift_tag(ctx.node.uid_shift(spec))}":
                shift = await asyncio.to_thread(_base_on_spare, ctx, spec, pool, inst)
            if shift is not None:
                ctx.agent.restock(spec)  # the spare it took
                url += f"&baseline={baseline}"
            else:
                listing = None
            async with session.get(url, headers=FORWARDED) as upstream:
                if upstream.status != 200:
                    raise ApiError(502, f"the source member answered {upstream.status}")
                began = float(upstream.headers[PRECOPY_TIME])
                await precopy_volume(pool, inst.uid,
                                     upstream.content.iter_chunked(peers.CHUNK), listing)
        if shift is not None:  # else every file is new: no baseline for the next move
            await asyncio.to_thread(_record_precopy_began, pool, inst.uid, made)
    except BaseException as exc:
        await asyncio.to_thread(discard_precopy, pool, inst.uid)
        if isinstance(exc, StorageError):
            raise ApiError(500, str(exc)) from exc
        raise
    return web.json_response({"since": began, "spare": shift is not None})


def _spare_ready(ctx: Context, spec: InstanceSpec, pool: VolumeHolder) -> bool:
    """Whether a spare copy of the instance's image waits in this member's pool."""
    template = ctx.node.images.ready_rootfs_template(spec.image, ctx.node.uid_shift(spec))
    return (template is not None and isinstance(pool, DirPool)
            and pool.spare_count(template) > 0)


def _base_on_spare(ctx: Context, spec: InstanceSpec, pool: VolumeHolder,
                   inst: Instance) -> str | None:
    """Put a spare copy of the instance's image rootfs where its pre-copy goes; the uid
    shift tag of that copy, or None if this member has no spare ready."""
    shift = ctx.node.uid_shift(spec)
    template = ctx.node.images.ready_rootfs_template(spec.image, shift)
    if template is None or not isinstance(pool, DirPool):
        return None
    volume = precopy_dir(pool, inst.uid) / pool.instance_path(inst.name).relative_to(pool.path)
    volume.parent.mkdir(mode=0o711, exist_ok=True)
    return shift_tag(shift) if pool.take_spare(template, volume) else None


def _record_precopy_began(pool: VolumeHolder, uid: str, made: float) -> None:
    path = precopy_dir(pool, uid)
    path.with_name(path.name + ".since").write_text(f"{made:.6f}")


def _precopy_began(pool: VolumeHolder, uid: str) -> float | None:
    path = precopy_dir(pool, uid)
    try:
        return float(path.with_name(path.name + ".since").read_text())
    except (OSError, ValueError):
        return None


async def delete(request: web.Request) -> web.Response:
    """DELETE: drop this member's copy, never that of an instance that lives here; with
    ``?incoming=1`` (a failed move cleaning up) only a copy this move received."""
    ctx = ctx_of(request)
    if not request.query.get("incoming"):  # the source's copy, once the move has ended
        await until_replica(lambda: _instance(ctx, request)[0].location != ctx.member)
    inst, _, pool = _instance(ctx, request)
    if request.query.get("incoming"):
        await asyncio.to_thread(discard_precopy, pool, inst.uid)
    if inst.location == ctx.member:
        raise ApiError(409, "The instance lives on this member; its volume stays")
    if request.query.get("incoming") and not await asyncio.to_thread(_marked, pool, inst):
        raise ApiError(409, "This member's volume of that name did not come from this move")
    if isinstance(pool, VmVolumes):
        await asyncio.to_thread(_delete_vm, ctx, pool, inst.name)
    else:
        await ctx.agent.forget_local_copy(inst.name, pool)
    return empty()


def _delete_vm(ctx: Context, volumes: VmVolumes, name: str) -> None:
    """Delete the VM here (its directory and volume), or only its volume if it was
    received but never defined."""
    try:
        ctx.node.qemu().delete(name)
    except NotFound:
        volumes.delete(name, missing_ok=True)


MARKER = ".received-for"  # next to rootfs: which instance uid a received volume belongs to


def _mark(pool: VolumeHolder, inst: Instance) -> None:
    (pool.instance_path(inst.name) / MARKER).write_text(inst.uid)


def _marked(pool: VolumeHolder, inst: Instance) -> bool:
    try:
        return (pool.instance_path(inst.name) / MARKER).read_text() == inst.uid
    except OSError:
        return False


ROUTES = [
    ("GET", "/internal/instances/{name}/volume", send),
    ("POST", "/internal/instances/{name}/volume", receive),
    ("DELETE", "/internal/instances/{name}/volume", delete),
]
