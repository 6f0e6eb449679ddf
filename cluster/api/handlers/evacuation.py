"""``POST /1.0/cluster/members/<name>/state``: evacuate a member and restore it (LXD).

The handler validates and commits an intent (kind ``evacuate`` or ``restore``); the
leader's evacuation controller does the work (``cluster/controllers/evacuation.py``,
which says what each ``cluster.evacuate`` mode does), so the evacuation outlives the
member that took the request and a new leader finishes it. The operation is the
intent's, rendered on any member (``api/intent_ops.py``); its metadata counts the
instances handled (``evacuate_progress``).
"""

from __future__ import annotations

from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.handlers.common import ctx_of
from cluster.api.intent_ops import start_intent
from cluster.api.response import ApiError, bad_request

MODES = ("", "auto", "stop", "migrate", "live-migrate")


async def member_state(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.MemberStatePost)
    action = body.get("action")
    if action not in ("evacuate", "restore"):
        raise bad_request("Action must be evacuate or restore")
    mode = str(body.get("mode", "") or "")
    if action == "evacuate" and mode not in MODES:
        raise bad_request(f"Unknown evacuation mode {mode!r}")
    with ctx.store.read() as state:
        if name not in state.members:
            raise ApiError(404, "Cluster member not found")
    return await start_intent(ctx, action, {
        "member": name, "mode": mode if action == "evacuate" else "",
        "description": f"{action.capitalize()} cluster member",
        "resources": {"cluster": [f"/1.0/cluster/members/{name}"]}})


ROUTES = [("POST", "/1.0/cluster/members/{name}/state", member_state)]
