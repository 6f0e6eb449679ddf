"""``/1.0/storage-pools`` and ``/1.0/networks`` (read-only views of what init made)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from cluster.api import queries
from cluster.api.handlers.common import ctx_of
from cluster.api.response import not_found, sync


def _used_by(ctx: Any, kind: str, name: str) -> list[str]:
    users = []
    with ctx.store.read() as state:
        for prof in state.profiles.values():
            for dev in prof.devices.values():
                if dev.get(kind) == name:
                    users.append(f"/1.0/profiles/{prof.name}")
        for inst in state.instances.values():
            for dev in inst.devices.values():
                if dev.get(kind) == name:
                    users.append(f"/1.0/instances/{inst.name}")
    return sorted(set(users))


async def _pool_view(ctx: Any, name: str) -> dict[str, Any]:
    with ctx.store.read() as state:
        pool = state.storage_pools.get(name)
        if pool is None:
            raise not_found("Storage pool not found")
        view = {"name": pool.name, "driver": pool.driver, "description": pool.description,
                "config": dict(pool.config), "status": "Created", "locations": [ctx.member]}
    view["used_by"] = _used_by(ctx, "pool", name)
    return view


async def list_pools(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    with ctx.store.read() as state:
        names = list(state.storage_pools)
    if queries.recursion(request):
        return sync([await _pool_view(ctx, n) for n in names])
    return sync([f"/1.0/storage-pools/{n}" for n in names])


async def get_pool(request: web.Request) -> web.Response:
    return sync(await _pool_view(ctx_of(request), request.match_info["name"]))


async def pool_resources(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    await _pool_view(ctx, request.match_info["name"])
    usage = await asyncio.to_thread(ctx.host.pool_usage, request.match_info["name"])
    return sync(usage)


async def _network_views(ctx: Any) -> list[dict[str, Any]]:
    with ctx.store.read() as state:
        managed = [{"name": n.name, "type": n.type, "description": n.description,
                    "config": dict(n.config), "managed": True, "status": "Created",
                    "locations": [ctx.member]} for n in state.networks.values()]
    names = {n["name"] for n in managed}
    host = await asyncio.to_thread(ctx.host.host_interfaces)
    others = [{"name": i["name"], "type": i.get("type", "physical"), "description": "",
               "config": {}, "managed": False, "status": "", "locations": [ctx.member]}
              for i in host if i["name"] not in names]
    views = managed + others
    for view in views:
        view["used_by"] = _used_by(ctx, "network", view["name"]) if view["managed"] else []
    return views


async def list_networks(request: web.Request) -> web.Response:
    views = await _network_views(ctx_of(request))
    if queries.recursion(request):
        return sync(views)
    return sync([f"/1.0/networks/{v['name']}" for v in views])


async def get_network(request: web.Request) -> web.Response:
    for view in await _network_views(ctx_of(request)):
        if view["name"] == request.match_info["name"]:
            return sync(view)
    raise not_found("Network not found")


async def network_leases(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    leases = await asyncio.to_thread(ctx.host.network_leases, request.match_info["name"])
    if leases is None:
        raise not_found("Network not found")
    return sync([{"hostname": lease.get("hostname", ""), "hwaddr": lease.get("mac", ""),
                  "address": lease.get("address", ""), "type": "dynamic",
                  "location": ctx.member} for lease in leases])


ROUTES = [
    ("GET", "/1.0/storage-pools", list_pools),
    ("GET", "/1.0/storage-pools/{name}", get_pool),
    ("GET", "/1.0/storage-pools/{name}/resources", pool_resources),
    ("GET", "/1.0/networks", list_networks),
    ("GET", "/1.0/networks/{name}", get_network),
    ("GET", "/1.0/networks/{name}/leases", network_leases),
]
