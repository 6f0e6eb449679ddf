"""Which requests this member relays to another (``proxy``), and to which member.

* Instance-local routes (``INSTANCE_LOCAL``: state, exec, files, logs, console) go to the
  member in the instance's ``location``; routes that only change the replicated state
  (create, update, rename, delete, snapshots) are served by any member and not listed.
* An operation lives in the memory of the member that runs it: an id unknown here is
  looked for on the other members (a probe ``GET``), and the answer is cached for
  ``OPERATION_CACHE_SECONDS``.

A request that already carries ``X-Corral-Forwarded`` is always served locally.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from cluster.api import intent_ops, proxy
from cluster.api.context import CTX, Context
from cluster.api.response import ApiError
from cluster.state.model import State

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPERATION_CACHE_SECONDS = 300.0  # as long as a finished operation is kept (op_registry.py)
OPERATIONS_PREFIX = "/1.0/operations/"

_INSTANCE = "/1.0/instances/{name}"
INSTANCE_LOCAL = frozenset({
    ("GET", f"{_INSTANCE}/state"), ("PUT", f"{_INSTANCE}/state"),
    ("POST", f"{_INSTANCE}/exec"),
    ("GET", f"{_INSTANCE}/console"), ("POST", f"{_INSTANCE}/console"),
    ("DELETE", f"{_INSTANCE}/console"),
    ("GET", f"{_INSTANCE}/files"), ("POST", f"{_INSTANCE}/files"),
    ("DELETE", f"{_INSTANCE}/files"),
    ("GET", f"{_INSTANCE}/logs"), ("GET", f"{_INSTANCE}/logs/{{file}}"),
    ("DELETE", f"{_INSTANCE}/logs/{{file}}"),
    ("GET", f"{_INSTANCE}/logs/exec-output"), ("GET", f"{_INSTANCE}/logs/exec-output/{{file}}"),
    ("DELETE", f"{_INSTANCE}/logs/exec-output/{{file}}"),
})
OPERATION_ROUTES = frozenset({
    ("GET", "/1.0/operations/{id}"), ("DELETE", "/1.0/operations/{id}"),
    ("GET", "/1.0/operations/{id}/wait"), ("GET", "/1.0/operations/{id}/websocket"),
})


def member_address(state: State, member: str) -> str:
    """The HTTPS address of ``member``; 503 when it has none (not yet or no longer known)."""
    record = state.members.get(member)
    if record is None or not record.address:
        raise ApiError(503, f"Cluster member {member!r} is not reachable")
    return record.address


def remote_member(state: State, here: str, name: str) -> tuple[str, str] | None:
    """Where to relay a request about instance ``name``, as ``(member, address)``: ``None``
    to serve it here (it is local, or unknown and the handler answers 404); raises 503 if
    its member has no address."""
    inst = state.instances.get(name)
    if inst is None or not inst.location or inst.location == here:
        return None
    return inst.location, member_address(state, inst.location)


async def _relay(request: web.Request, address: str, ctx: Context) -> web.StreamResponse:
    if proxy.is_websocket(request):
        return await proxy.forward_websocket(request, address, ctx)
    return await proxy.forward(request, address, ctx)


def forward_if_remote(handler: Handler) -> Handler:
    """Wrap an instance-local handler: relay to the instance's member unless it is here."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        if not proxy.is_forwarded(request):
            ctx = request.app[CTX]
            with ctx.store.read() as state:
                remote = remote_member(state, ctx.member, request.match_info["name"])
            if remote is not None:
                response = await _relay(request, remote[1], ctx)
                _remember_operation(request, response, remote[0])
                return response
        return await handler(request)

    return wrapper


def forward_if_elsewhere(handler: Handler) -> Handler:
    """Wrap an operation handler: an id unknown here is relayed to the member running it."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX]
        op_id = request.match_info["id"]
        if (not proxy.is_forwarded(request) and ctx.ops.get(op_id) is None
                and intent_ops.find(ctx.store, op_id) is None):  # intents: any member
            address = await locate_operation(request, ctx, op_id)
            if address is not None:
                return await _relay(request, address, ctx)
        return await handler(request)

    return wrapper


def _remember_operation(request: web.Request, response: web.StreamResponse,
                        member: str) -> None:
    """An operation the relayed request started lives on ``member``: note it, so that the
    client's next calls (its exec websockets, at once and together) need no probe."""
    location = response.headers.get("Location", "")
    if response.status == 202 and location.startswith(OPERATIONS_PREFIX):
        _cache(request, location.removeprefix(OPERATIONS_PREFIX), member)


def _cache(request: web.Request, op_id: str, member: str) -> None:
    cache = request.app[proxy.PROXY].operations
    now = asyncio.get_running_loop().time()
    for stale in [k for k, (_, expiry) in cache.items() if expiry <= now]:
        del cache[stale]
    cache[op_id] = (member, now + OPERATION_CACHE_SECONDS)


async def locate_operation(request: web.Request, ctx: Context, op_id: str) -> str | None:
    """The address of the member that knows operation ``op_id``, or ``None``.

    A websocket request without a secret is refused locally anyway, so it never makes
    this member probe the others (the route is open to untrusted clients).
    """
    if proxy.is_websocket(request) and not request.query.get("secret"):
        return None
    cache = request.app[proxy.PROXY].operations
    now = asyncio.get_running_loop().time()
    with ctx.store.read() as state:
        members = {name: m.address for name, m in state.members.items()
                   if name != ctx.member and m.address}
    cached = cache.get(op_id)
    if cached is not None and cached[1] > now and cached[0] in members:
        return members[cached[0]]
    names = sorted(members)
    found = await asyncio.gather(*(proxy.probe(request, members[n], f"/1.0/operations/{op_id}",
                                               ctx) for n in names))
    for name, ok in zip(names, found, strict=True):
        if ok:
            _cache(request, op_id, name)
            return members[name]
    return None


def wrap_routes(table: Sequence[tuple[str, str, Any, str]]) -> list[tuple[str, str, Any, str]]:
    """The route table with instance-local and operation handlers wrapped for relaying."""
    wrapped = []
    for method, path, handler, policy in table:
        if (method, path) in INSTANCE_LOCAL:
            handler = forward_if_remote(handler)
        elif (method, path) in OPERATION_ROUTES:
            handler = forward_if_elsewhere(handler)
        wrapped.append((method, path, handler, policy))
    return wrapped
