"""``/1.0/images/aliases``."""

from __future__ import annotations

from aiohttp import web

from cluster.api import queries, schemas
from cluster.api.bodies import json_body
from cluster.api.handlers.common import ctx_of
from cluster.api.handlers.images import resolve
from cluster.api.response import not_found, sync
from cluster.state.commands import command
from cluster.state.model import Alias


def _view(alias: Alias) -> dict[str, str]:
    return {"name": alias.name, "target": alias.target, "description": alias.description,
            "type": alias.type}


async def list_aliases(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    with ctx.store.read() as state:
        if queries.recursion(request):
            return sync([_view(a) for a in state.aliases.values()])
        return sync([f"/1.0/images/aliases/{a}" for a in state.aliases])


async def create_alias(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await json_body(request, schemas.AliasesPost)
    target = resolve(ctx, str(body.get("target", "")))
    await ctx.store.submit(command("alias.create", name=body.get("name"), target=target,
                                   description=body.get("description", "")))
    return sync({})


async def get_alias(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    with ctx.store.read() as state:
        alias = state.aliases.get(request.match_info["name"])
        if alias is None:
            raise not_found("Alias not found")
        return sync(_view(alias))


async def update_alias(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await json_body(request, schemas.AliasPut)
    args = {"description": body["description"]} if "description" in body else {}
    if body.get("target"):
        args["target"] = resolve(ctx, str(body["target"]))
    await ctx.store.submit(command("alias.update", name=request.match_info["name"], **args))
    return sync({})


async def rename_alias(request: web.Request) -> web.Response:
    body = await json_body(request, schemas.NamePost)
    await ctx_of(request).store.submit(command(
        "alias.rename", name=request.match_info["name"], new_name=body.get("name")))
    return sync({})


async def delete_alias(request: web.Request) -> web.Response:
    await ctx_of(request).store.submit(command("alias.delete", name=request.match_info["name"]))
    return sync({})


ROUTES = [
    ("GET", "/1.0/images/aliases", list_aliases),
    ("POST", "/1.0/images/aliases", create_alias),
    ("GET", "/1.0/images/aliases/{name:.+}", get_alias),
    ("PUT", "/1.0/images/aliases/{name:.+}", update_alias),
    ("PATCH", "/1.0/images/aliases/{name:.+}", update_alias),
    ("POST", "/1.0/images/aliases/{name:.+}", rename_alias),
    ("DELETE", "/1.0/images/aliases/{name:.+}", delete_alias),
]
