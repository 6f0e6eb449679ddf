"""Cold move of an instance between members, driven by the member that got the request
(a running VM migrates live instead: ``live_moves``; a stopped VM moves cold as a
container does, its volume being its disk on the pool: ``storage/vm_volumes.py``; a
running container with ``migration.stateful=true`` is stopped statefully, its CRIU
checkpoint travels in its volume, and it is restored on the target).

stop (if running; a running container's volume is pre-copied meanwhile) ->
``instance.move_begin`` (apply re-checks the target and reserves there) -> the target
pulls the volume (or what changed since the pre-copy) from the source over mutual TLS ->
``move_end`` (the instance lives on the target) -> start there (if it ran) while the
source drops its copy. A failure before ``move_end`` aborts: the target drops what it received, the
reservation is freed and the instance runs again on the source, untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from cluster.api.context import Context
from cluster.api.live_moves import live_migrate
from cluster.api.response import ApiError
from cluster.state.apply_instances import expanded
from cluster.state.commands import command
from cluster.state.errors import BadRequest
from cluster.state.validate import is_true

log = logging.getLogger(__name__)
FORWARDED = {"X-Corral-Forwarded": "1"}
STOP_TIMEOUT = 30


def _addresses(ctx: Context, *members: str) -> list[str]:
    with ctx.store.read() as state:
        found = []
        for name in members:
            member = state.members.get(name)
            if member is None or not member.address:
                raise ApiError(503, f"Cluster member {name!r} is not reachable")
            found.append(member.address)
    return found


async def move_instance(ctx: Context, name: str, target: str, *, requested: str = "",
                        origin: str | None = None, progress: Any = None,
                        live: bool = True) -> dict[str, Any] | None:
    """Move ``name`` to ``target``; ``origin`` records (or clears, with ``""``) the member
    an evacuation took it from. ``progress(bytes)`` is called as the data streams. A
    running VM migrates live (``live_moves``) unless ``live`` is false; QEMU's figures of
    that migration are returned (None for a cold move)."""
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None:
            raise ApiError(404, "Instance not found")
        uid, source, power, kind = inst.uid, inst.location, inst.power, inst.type
        config, _ = expanded(state, inst.config, inst.devices, inst.profiles)
    if target == source:
        raise ApiError(400, f"Instance {name} is already on member {target}")
    was_running = power in ("Running", "Frozen")
    source_address, target_address = _addresses(ctx, source, target)
    if kind == "virtual-machine" and power == "Frozen":
        raise ApiError(400, "Resume the virtual machine before moving it")
    if kind == "virtual-machine" and power == "Running" and live:
        return await live_migrate(ctx, name, target, source_address, target_address,
                                  requested=requested, origin=origin, progress=progress)
    # A running container with migration.stateful moves with its processes: a stateful
    # stop (CRIU dump into state/, which the volume carries), then a stateful start.
    stateful = (kind == "container" and power == "Running" and live
                and is_true(config.get("migration.stateful", "")))
    laps: list[float] = [time.monotonic()]
    # A running container's volume is pre-copied, then only the delta is sent. A stateful
    # one keeps running meanwhile (its downtime is dump, delta and restore); a clean stop
    # takes seconds anyway, so the pre-copy runs alongside it.
    precopy = (asyncio.create_task(_precopy(ctx, name, uid, source_address, target_address))
               if kind == "container" and was_running else None)
    stopped = False
    try:
        if stateful and precopy is not None:
            await asyncio.wait([precopy])
        if was_running:
            await ctx.submit_and_wait(command("instance.action", name=name, action="stop",
                                              force=False, timeout=STOP_TIMEOUT,
                                              stateful=stateful))
            stopped = True
            log.info("stopped %s%s in %.2f s", name, " statefully" if stateful else "",
                     time.monotonic() - laps[0])
        since = await precopy if precopy is not None else None
        laps.append(time.monotonic())
        await ctx.store.submit(command("instance.move_begin", name=name, uid=uid,
                                       target=target, requested=requested or target))
    except BaseException:
        if precopy is not None:
            await asyncio.gather(precopy, return_exceptions=True)
            await _drop_copy(ctx, name, uid, target_address, incoming=True)
        if stopped:
            await _start(ctx, name, stateful)
        raise
    try:
        await _pull(ctx, name, uid, source_address, target_address, progress, since)
        await ctx.store.submit(command("instance.move_end", name=name, uid=uid, target=target,
                                       origin=origin))
        laps.append(time.monotonic())
    except BaseException as exc:
        log.warning("moving %s to %s failed: %s", name, target, exc)
        await _abort(ctx, name, uid, target_address, was_running, stateful)
        raise
    # The instance lives on the target now: start it there while the source drops its copy.
    await asyncio.gather(_drop_copy(ctx, name, uid, source_address),
                         _start(ctx, name, stateful) if was_running else asyncio.sleep(0))
    laps.append(time.monotonic())
    log.info("moved %s from %s to %s in %.2f s (stop %.2f, copy %.2f, start and drop %.2f)",
             name, source, target, laps[-1] - laps[0],
             *(b - a for a, b in zip(laps, laps[1:], strict=False)))
    return None


async def _precopy(ctx: Context, name: str, uid: str, source: str, target: str,
                   ) -> float | None:
    """Have the target copy the volume of the running container; the time the copy
    began (on the source's clock), or None if it failed (the move then copies all)."""
    url = (f"https://{target}/internal/instances/{name}/volume?uid={uid}&source={source}"
           f"&precopy=1")
    started = time.monotonic()
    try:
        async with ctx.peer_session() as session:
            async with session.post(url, headers=FORWARDED) as resp:
                doc = await resp.json(content_type=None)
                if resp.status != 200:
                    raise ApiError(resp.status, str(doc.get("error")))
                log.info("pre-copied %s to %s in %.2f s (%s)", name, target,
                         time.monotonic() - started,
                         "on a spare of its image" if doc.get("spare") else "whole")
                return float(doc["since"])
    except Exception as exc:  # noqa: BLE001 - a pre-copy only saves time
        log.warning("pre-copying %s to %s failed (%s); it will be copied whole", name,
                    target, exc)
        return None


async def _pull(ctx: Context, name: str, uid: str, source: str, target: str,
                progress: Any, since: float | None = None) -> None:
    url = f"https://{target}/internal/instances/{name}/volume?uid={uid}&source={source}"
    if since is not None:
        url += f"&since={since:.6f}"
    async with ctx.peer_session() as session:
        async with session.post(url, headers=FORWARDED) as resp:
            if resp.status != 200:
                doc = await resp.json(content_type=None)
                raise ApiError(resp.status, f"the target refused the volume: {doc.get('error')}")
            async for line in resp.content:
                report = json.loads(line)
                if "error" in report:
                    raise ApiError(500, f"copying the volume of {name} failed: "
                                        f"{report['error']}")
                if progress is not None:
                    progress(int(report.get("bytes", report.get("done", 0))))
                if "done" in report:
                    return
    raise ApiError(500, f"the target stopped answering while copying {name}")


async def _abort(ctx: Context, name: str, uid: str, target: str, was_running: bool,
                 stateful: bool) -> None:
    try:
        await _drop_copy(ctx, name, uid, target, incoming=True)
        await ctx.store.submit(command("instance.move_abort", name=name, uid=uid))
        if was_running:
            await _start(ctx, name, stateful)
    except Exception as exc:  # noqa: BLE001 - the original failure is what the caller sees
        log.error("cleaning up the failed move of %s: %s", name, exc)


async def _drop_copy(ctx: Context, name: str, uid: str, address: str,
                     incoming: bool = False) -> None:
    url = f"https://{address}/internal/instances/{name}/volume?uid={uid}"
    url += "&incoming=1" if incoming else ""
    try:
        async with ctx.peer_session(timeout=120) as session:
            async with session.delete(url, headers=FORWARDED) as resp:
                if resp.status not in (200, 404, 409):
                    log.warning("member %s kept a copy of %s: %s", address, name,
                                await resp.text())
    except Exception as exc:  # noqa: BLE001 - a leftover copy is garbage, not a failure
        log.warning("member %s kept a copy of %s: %s", address, name, exc)


async def _start(ctx: Context, name: str, stateful: bool = False) -> None:
    """Start ``name``; restoring its checkpoint first if ``stateful``. A checkpoint that
    does not restore (CRIU, kernel) is dropped and the container boots afresh: running
    without its old processes beats not running."""
    try:
        await ctx.submit_and_wait(command("instance.action", name=name, action="start",
                                          stateful=stateful))
    except (ApiError, BadRequest) as exc:
        if not stateful:
            raise
        log.warning("%s did not restore from its checkpoint (%s); booting it afresh",
                    name, exc)
        await ctx.submit_and_wait(command("instance.action", name=name, action="start"))
