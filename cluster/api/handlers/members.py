"""``/1.0/cluster/members``: LXD's cluster member objects, with ONLINE/OFFLINE from heartbeats."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from cluster.api.handlers.common import ctx_of, int_query
from cluster.api.response import not_found, sync
from cluster.state.model import Member, State

DEFAULT_OFFLINE_THRESHOLD = 10.0
MIN_OFFLINE_THRESHOLD = 3.0


def offline_threshold(state: State) -> float:
    """``cluster.offline_threshold`` in seconds (default 10, at least 3)."""
    value = state.config.get("cluster.offline_threshold", "")
    try:
        seconds = float(value) if value else DEFAULT_OFFLINE_THRESHOLD
    except ValueError:
        seconds = DEFAULT_OFFLINE_THRESHOLD
    return max(MIN_OFFLINE_THRESHOLD, seconds)


def member_status(member: Member, now: float, threshold: float) -> str:
    """ONLINE while the member's last heartbeat is younger than the threshold."""
    if member.state == "EVACUATED":
        return "EVACUATED"
    return "ONLINE" if now - member.heartbeat_at <= threshold else "OFFLINE"


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
