"""``/1.0/profiles``."""

from __future__ import annotations

from aiohttp import web

from cluster.api import queries, schemas, views
from cluster.api.bodies import json_body
from cluster.api.handlers.common import ctx_of, if_match
from cluster.api.response import not_found, sync
from cluster.state import etags
from cluster.state.commands import command


async def list_profiles(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    with ctx.store.read() as state:
        if queries.recursion(request):
            return sync([views.profile(state, p) for p in state.profiles.values()])
        return sync([f"/1.0/profiles/{p}" for p in state.profiles])


async def create_profile(request: web.Request) -> web.Response:
    body = await json_body(request, schemas.ProfilesPost)
    await ctx_of(request).store.submit(command(
        "profile.create", name=body.get("name"), config=body.get("config") or {},
        devices=body.get("devices") or {}, description=body.get("description", "")))
    return sync({})


async def get_profile(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    with ctx.store.read() as state:
        profile = state.profiles.get(request.match_info["name"])
        if profile is None:
            raise not_found("Profile not found")
        return sync(views.profile(state, profile), etag=etags.profile(profile))


async def put_profile(request: web.Request) -> web.Response:
    body = await json_body(request, schemas.ProfilePut)
    await ctx_of(request).store.submit(command(
        "profile.update", name=request.match_info["name"], config=body.get("config") or {},
        devices=body.get("devices") or {}, description=body.get("description", ""),
        if_match=if_match(request)))
    return sync({})


async def patch_profile(request: web.Request) -> web.Response:
    """Only the fields sent go in the command; apply merges them into the committed
    profile, so concurrent PATCHes of different keys both stay."""
    body = await json_body(request, schemas.ProfilePut)
    given = {key: body[key] for key in ("config", "devices", "description") if key in body}
    await ctx_of(request).store.submit(command(
        "profile.patch", name=request.match_info["name"], if_match=if_match(request), **given))
    return sync({})


async def rename_profile(request: web.Request) -> web.Response:
    body = await json_body(request, schemas.NamePost)
    await ctx_of(request).store.submit(command(
        "profile.rename", name=request.match_info["name"], new_name=body.get("name")))
    return sync({})


async def delete_profile(request: web.Request) -> web.Response:
    await ctx_of(request).store.submit(command("profile.delete",
                                               name=request.match_info["name"]))
    return sync({})


ROUTES = [
    ("GET", "/1.0/profiles", list_profiles),
    ("POST", "/1.0/profiles", create_profile),
    ("GET", "/1.0/profiles/{name}", get_profile),
    ("PUT", "/1.0/profiles/{name}", put_profile),
    ("PATCH", "/1.0/profiles/{name}", patch_profile),
    ("POST", "/1.0/profiles/{name}", rename_profile),
    ("DELETE", "/1.0/profiles/{name}", delete_profile),
]
