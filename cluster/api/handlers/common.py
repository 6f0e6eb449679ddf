"""Small helpers shared by the handlers."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from aiohttp import web

from cluster.api.context import CTX, Context, Tracker
from cluster.api.response import ApiError, async_operation, not_found
from cluster.state.model import Instance


def ctx_of(request: web.Request) -> Context:
    return request.app[CTX]


def instance_copy(ctx: Context, name: str) -> Instance:
    """A private copy of the named instance record; 404 when absent."""
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None:
            raise not_found("Instance not found")
        return copy.deepcopy(inst)


def _statuses(ctx: Context, items: list[tuple[str, str, int]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, observed, generation in items:
        out[name] = observed if generation == 0 else ctx.node.driver.status(name)
    return out


async def live_statuses(ctx: Context, instances: list[Instance]) -> dict[str, str]:
    """The real status of local instances (one worker-thread hop for all of them)."""
    items = [(i.name, i.observed.status, i.observed.generation) for i in instances
             if i.location == ctx.member]
    statuses = await asyncio.to_thread(_statuses, ctx, items) if items else {}
    for inst in instances:
        statuses.setdefault(inst.name, inst.observed.status)
        if statuses[inst.name] == "Error" and inst.observed.generation == 0:
            statuses[inst.name] = "Stopped"
    return statuses


def tracked_operation(ctx: Context, tracker: Tracker, description: str,
                      resources: dict[str, list[str]],
                      lifecycle: tuple[str, str] | None = None,
                      result: dict[str, Any] | None = None) -> web.Response:
    """An async operation that completes when the agent reports the tracked work."""

    async def run(op: Any) -> dict[str, Any] | None:
        await tracker.wait()
        if lifecycle is not None:
            ctx.events.lifecycle(lifecycle[0], lifecycle[1])
        return result

    op = ctx.ops.start(description, run, resources)
    return async_operation(op.to_dict())


def int_query(request: web.Request, key: str, default: int = 0) -> int:
    value = request.query.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ApiError(400, f"Invalid value for {key!r}: {value!r}") from exc
