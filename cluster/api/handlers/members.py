"""``/1.0/cluster/members``: LXD's cluster member objects, with the ONLINE/OFFLINE status
the Raft leader committed (judged on its own clock from the members' heartbeats)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster.api import queries, schemas
from cluster.api.bodies import json_body
from cluster.api.handlers.common import ctx_of
from cluster.api.response import empty, not_found, sync
from cluster.state.apply_members import member_status, offline_threshold
from cluster.state.commands import command
from cluster.state.model import Member, State
from cluster.state.placement import member_usage

__all__ = ["member_status", "member_view", "offline_threshold", "ROUTES"]

def member_view(state: State, member: Member, leader_raft: str | None) -> dict[str, Any]:
    status = member_status(member)
    roles = list(member.roles)
    if leader_raft and member.raft_address == leader_raft:
        roles.append("database-leader")
    return {
        "server_name": member.name,
        "url": f"https://{member.address}" if member.address else "",
        "database": "database" in member.roles, "roles": roles,
        "architecture": member.architecture, "failure_domain": "default",
        "description": member.description, "config": dict(member.config),
        "groups": list(member.groups) or ["default"],
        "status": status.capitalize() if status != "ONLINE" else "Online",
        "message": "Fully operational" if status == "ONLINE" else
        f"No heartbeat for over {offline_threshold(state):g}s (as the leader judged)"
        if status == "OFFLINE" else "Unavailable due to maintenance",
        # corral's own field (LXD clients ignore it): capacity, allocation ratio,
        # schedulable and used per dimension, to see why a placement was refused.
        "placement": member_usage(state, member),
    }


async def list_members(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    leader = ctx.store.leader()
    with ctx.store.read() as state:
        if queries.recursion(request):
            return sync([member_view(state, m, leader) for m in state.members.values()])
        return sync([f"/1.0/cluster/members/{m}" for m in state.members])


async def get_member(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    leader = ctx.store.leader()
    with ctx.store.read() as state:
        member = state.members.get(request.match_info["name"])
        if member is None:
            raise not_found("Cluster member not found")
        return sync(member_view(state, member, leader))


READ_ONLY_ROLES = {"database-leader"}


async def update_member(request: web.Request) -> web.Response:
    """PUT/PATCH /1.0/cluster/members/<name>: roles, description, config and groups.
    Role ``database`` makes the member a voter (within ``cluster.max_voters``); the Raft
    leader then brings Raft's own membership in line (see ``cluster_join.keep_voters``)."""
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.MemberPut)
    args: dict[str, Any] = {"name": name}
    for key in ("roles", "config", "groups", "description"):
        if key in body:
            args[key] = body[key]
        elif request.method == "PUT" and key != "roles":
            args[key] = "" if key == "description" else {} if key == "config" else []
    if isinstance(args.get("roles"), list):
        args["roles"] = [r for r in args["roles"] if r not in READ_ONLY_ROLES]
    if isinstance(args.get("groups"), list):
        args["groups"] = [g for g in args["groups"] if g != "default"]
    if request.method == "PATCH":
        args["merge_config"] = True  # apply merges into the committed config
    await ctx.store.submit(command("member.update", **args))
    return empty()


ROUTES = [
    ("GET", "/1.0/cluster/members", list_members),
    ("GET", "/1.0/cluster/members/{name}", get_member),
    ("PUT", "/1.0/cluster/members/{name}", update_member),
    ("PATCH", "/1.0/cluster/members/{name}", update_member),
]
