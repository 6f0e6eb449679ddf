"""``/1.0/cluster/members``: LXD's cluster member objects, with ONLINE/OFFLINE from heartbeats."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from cluster.api.handlers.common import ctx_of, int_query
from cluster.api.response import not_found, sync
from cluster.state.apply_members import member_status, offline_threshold
from cluster.state.model import Member, State

__all__ = ["member_status", "member_view", "offline_threshold", "ROUTES"]

def member_view(state: State, member: Member, leader_raft: str | None,
                now: float) -> dict[str, Any]:
    status = member_status(member, now, offline_threshold(state))
    roles = list(member.roles)
    if leader_raft and member.raft_address == leader_raft:
        roles.append("database-leader")
    return {
        "server_name": member.name,
        "url": f"https://{member.address}" if member.address else "",
        "database": "database" in member.roles, "roles": roles,
        "architecture": member.architecture, "failure_domain": "default",
        "description": member.description, "config": {}, "groups": ["default"],
        "status": status.capitalize() if status != "ONLINE" else "Online",
        "message": "Fully operational" if status == "ONLINE" else
        f"No heartbeat for {now - member.heartbeat_at:.0f}s",
    }


async def list_members(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    leader = ctx.store.leader()
    now = time.time()
    with ctx.store.read() as state:
        if int_query(request, "recursion"):
            return sync([member_view(state, m, leader, now) for m in state.members.values()])
        return sync([f"/1.0/cluster/members/{m}" for m in state.members])


async def get_member(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    leader = ctx.store.leader()
    with ctx.store.read() as state:
        member = state.members.get(request.match_info["name"])
        if member is None:
            raise not_found("Cluster member not found")
        return sync(member_view(state, member, leader, time.time()))


ROUTES = [
    ("GET", "/1.0/cluster/members", list_members),
    ("GET", "/1.0/cluster/members/{name}", get_member),
]
