"""Small helpers shared by the handlers."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cluster.api.context import CTX, Context, Tracker
from cluster.api.response import ApiError, async_operation, not_found
from cluster.state.model import Instance


def ctx_of(request: web.Request) -> Context:
    return request.app[CTX]


def if_match(request: web.Request) -> str:
    """The ETag the client's ``If-Match`` names (``""`` without one), for the command:
    apply compares it with the committed record, so no update between the check and
    the change can be lost."""
    return request.headers.get("If-Match", "").strip().strip('"')


def instance_copy(ctx: Context, name: str) -> Instance:
    """A private copy of the named instance record; 404 when absent."""
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None:
            raise not_found("Instance not found")
        return copy.deepcopy(inst)




@dataclass(frozen=True)
class Probe:
    """What is needed to look at one instance without holding the state lock."""

    name: str
    observed: str
    generation: int
    local: bool
    type: str = "container"


def _map(fn: Callable[[Probe], dict[str, Any]], probes: list[Probe]) -> list[dict[str, Any]]:
    return [fn(p) for p in probes]


def probe_instances(ctx: Context, probes: list[Probe],
                    full: bool) -> Awaitable[dict[str, dict[str, Any]]]:
    """Live status (or, with ``full``, the whole LXD state) of many instances, in one
    worker-thread hop. Instances not yet created or not local show what was observed."""

    def one(probe: Probe) -> dict[str, Any]:
        if not probe.local or probe.generation == 0:
            return {**ctx.host.stopped_state(), "status": probe.observed}
        if full:
            return ctx.host.state(probe.name, probe.type)
        return {"status": ctx.host.status(probe.name, probe.type)}

    async def collect() -> dict[str, dict[str, Any]]:
        # One hop, serially: spreading the reads over threads measured slower (the GIL).
        results = await asyncio.to_thread(_map, one, probes)
        return {p.name: st for p, st in zip(probes, results, strict=True)}

    return collect()


def probe_of(ctx: Context, inst: Instance) -> Probe:
    return Probe(inst.name, inst.observed.status, inst.observed.generation,
                 inst.location == ctx.member, inst.type)


async def live_statuses(ctx: Context, instances: list[Instance]) -> dict[str, str]:
    """The real status of each instance (one worker-thread hop for all of them)."""
    found = await probe_instances(ctx, [probe_of(ctx, i) for i in instances], full=False)
    return {name: "Stopped" if st["status"] == "Error" else st["status"]
            for name, st in found.items()}


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


REPLICA_LAG = 5.0  # s a member waits for its replica to apply what a peer committed


async def until_replica(ready: Callable[[], bool], timeout: float = REPLICA_LAG) -> None:
    """Wait until ``ready()`` holds on this member's replica, at most ``timeout`` s: a
    peer that committed a command (a move's begin or end) and at once asks this member
    to act on it may be a few milliseconds ahead of this member's replica. Peers send
    their commit index, which this member applies first (``app.replica_middleware``);
    this check stays for callers that did not (an older member during an upgrade)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if ready():
                return
        except ApiError:
            pass
        await asyncio.sleep(0.01)
