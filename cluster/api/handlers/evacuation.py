"""``POST /1.0/cluster/members/<name>/state``: evacuate a member and restore it (LXD).

Evacuation marks the member EVACUATED (the scheduler places nothing new there), then
handles each instance by its ``cluster.evacuate``: ``auto``, ``migrate`` and
``live-migrate`` move it to a member the scheduler picks, recording
``volatile.evacuate.origin`` (``auto`` and ``live-migrate`` keep a running VM running and a
running container with ``migration.stateful=true`` its processes; ``migrate`` moves cold);
``stop`` stops it there. Restore brings the moved
instances back and starts the stopped ones. Instances are handled concurrently.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.moves import move_instance
from cluster.api.placement import chosen_member, plan_instance
from cluster.api.response import ApiError, async_operation, bad_request
from cluster.state.commands import command
from cluster.state.model import State
from corral_shared.resources import ZERO, Resources
from scheduler.plan import Plan

ORIGIN = "volatile.evacuate.origin"
STOPPED = "volatile.evacuate.stopped"
PARALLEL = 8


async def member_state(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.MemberStatePost)
    action = body.get("action")
    if action not in ("evacuate", "restore"):
        raise bad_request("Action must be evacuate or restore")
    with ctx.store.read() as state:
        if name not in state.members:
            raise ApiError(404, "Cluster member not found")
    run = _evacuate if action == "evacuate" else _restore

    async def operation(op: Any) -> None:
        await run(ctx, name, str(body.get("mode", "")))

    op = ctx.ops.start(f"{action.capitalize()} cluster member", operation,
                       {"cluster": [f"/1.0/cluster/members/{name}"]})
    return async_operation(op.to_dict())


async def _evacuate(ctx: Context, member: str, mode: str) -> None:
    await ctx.store.submit(command("member.set_state", name=member, state="EVACUATED"))
    with ctx.store.read() as state:
        todo = sorted((i.name, mode or i.config.get("cluster.evacuate", "") or "auto",
                       i.power) for i in state.instances.values() if i.location == member)
        targets = _plan_all(state, member, [name for name, how, _ in todo if how != "stop"])
    await _each(todo, lambda name, how, power: _evacuate_one(ctx, member, name, how, power,
                                                             targets.get(name)))


def _plan_all(state: State, member: str, names: list[str]) -> dict[str, Plan]:
    """Plans for all of ``names`` at once, each counting the ones before it: planned
    alone, concurrent moves would all pick the same least loaded member."""
    plans: dict[str, Plan] = {}
    pending: dict[str, Resources] = {}
    for name in names:
        inst = state.instances[name]
        plan = plans[name] = plan_instance(
            state, request_id=f"{inst.uid}-evacuate", name=name, type_=inst.type,
            architecture=inst.architecture, config=inst.config, devices=inst.devices,
            profiles=inst.profiles, exclude=[member], pending=pending)
        if plan.member is not None:
            pending[plan.member] = pending.get(plan.member, ZERO) + inst.demand
    return plans


async def _evacuate_one(ctx: Context, member: str, name: str, how: str, power: str,
                        plan: Plan | None) -> None:
    if plan is None:  # cluster.evacuate=stop
        if power in ("Running", "Frozen"):
            await _set_volatile(ctx, name, STOPPED, "true")
            await ctx.submit_and_wait(command("instance.action", name=name, action="stop",
                                              force=False, timeout=30))
        return
    # Running VMs and stateful containers keep running for auto and live-migrate;
    # "migrate" means a cold move.
    await move_instance(ctx, name, chosen_member(plan), origin=member, live=how != "migrate")


async def _restore(ctx: Context, member: str, mode: str) -> None:
    await ctx.store.submit(command("member.set_state", name=member, state="ONLINE"))
    with ctx.store.read() as state:
        back = sorted(i.name for i in state.instances.values()
                      if i.config.get(ORIGIN) == member and i.location != member)
        stopped = sorted(i.name for i in state.instances.values()
                         if i.location == member and i.config.get(STOPPED) == "true")
    await _each([(n,) for n in back],
                lambda name: move_instance(ctx, name, member, requested=member, origin=""))
    for name in stopped:
        await _set_volatile(ctx, name, STOPPED, "false")
        await ctx.submit_and_wait(command("instance.action", name=name, action="start"))


async def _set_volatile(ctx: Context, name: str, key: str, value: str) -> None:
    """One key, merged by apply into the committed config (a change made meanwhile stays)."""
    await ctx.store.submit(command("instance.patch", name=name, config={key: value}))


async def _each(items: list[tuple[Any, ...]], work: Any) -> None:
    """Run ``work(*item)`` for every item, ``PARALLEL`` at a time; raise the first
    failure after all have finished (one stuck instance does not strand the others)."""
    gate = asyncio.Semaphore(PARALLEL)

    async def one(item: tuple[Any, ...]) -> None:
        async with gate:
            await work(*item)

    results = await asyncio.gather(*(one(i) for i in items), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise ApiError(500, f"{len(failures)} instance(s) could not be handled: {failures[0]}")


ROUTES = [("POST", "/1.0/cluster/members/{name}/state", member_state)]
