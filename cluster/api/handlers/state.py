"""``/1.0/instances/<name>/state``: live state, and power actions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import (
    ctx_of,
    instance_copy,
    live_statuses,
    probe_instances,
    probe_of,
    tracked_operation,
)
from cluster.api.response import bad_request, sync
from cluster.state.commands import command
from cluster.state.model import Instance

LIFECYCLE = {"start": "instance-started", "stop": "instance-stopped",
             "restart": "instance-restarted", "freeze": "instance-paused",
             "unfreeze": "instance-resumed"}


async def instance_states(ctx: Context, instances: list[Instance]) -> list[dict[str, Any]]:
    found = await probe_instances(ctx, [probe_of(ctx, i) for i in instances], full=True)
    return [found[i.name] for i in instances]


async def get_state(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    inst = instance_copy(ctx, request.match_info["name"])
    return sync((await instance_states(ctx, [inst]))[0])


def _refusal(action: str, status: str) -> str:
    if action == "start" and status == "Running":
        return "The instance is already running"
    if action == "stop" and status == "Stopped":
        return "The instance is already stopped"
    if action in ("freeze", "restart") and status != "Running" and not (
            action == "restart" and status == "Frozen"):
        return "The instance isn't running"
    if action == "unfreeze" and status != "Frozen":
        return "The instance is not frozen"
    return ""


async def put_state(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.InstanceStatePut)
    action = body.get("action")
    if action not in LIFECYCLE:
        raise bad_request(f"Unknown state action {action!r}")
    stateful = body.get("stateful", False)
    if not isinstance(stateful, bool):
        raise bad_request("Invalid stateful: must be a boolean")
    inst = instance_copy(ctx, name)
    if not inst.busy:
        status = (await live_statuses(ctx, [inst]))[name]
        if action == "start" and status == "Frozen":
            action = "unfreeze"  # LXD: start on a frozen instance resumes it
        problem = _refusal(action, status)
        if problem:
            raise bad_request(problem)
    timeout = body.get("timeout", -1)
    if not isinstance(timeout, int | float):
        raise bad_request("Invalid timeout")
    cmd = command("instance.action", name=name, action=action,
                  force=bool(body.get("force", False)), timeout=timeout, stateful=stateful)
    tracker = await ctx.submit_tracked(cmd)
    return tracked_operation(ctx, tracker, f"{action.capitalize()} instance",
                             {"instances": [f"/1.0/instances/{name}"]},
                             (LIFECYCLE[action], f"/1.0/instances/{name}"))
