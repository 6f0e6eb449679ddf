"""``/1.0/operations``: list, get, wait, cancel, and the websocket of an operation."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from cluster.api import fanout, queries
from cluster.api.handlers.common import ctx_of
from cluster.api.operations import Operation
from cluster.api.response import ApiError, empty, not_found, sync


def _op(request: web.Request) -> Operation:
    op = ctx_of(request).ops.get(request.match_info["id"])
    if op is None:
        raise not_found("Operation not found")
    return op


async def list_operations(request: web.Request) -> web.Response:
    """This member's operations and, in a cluster, every other online member's (LXD)."""
    ops = ctx_of(request).ops.all()
    recursion = queries.recursion(request)
    grouped: dict[str, list[object]] = {}
    for op in ops:
        key = "running" if op.status in ("Running", "Cancelling") else op.status.lower()
        grouped.setdefault(key, []).append(
            op.to_dict() if recursion else f"/1.0/operations/{op.id}")
    if fanout.should_fan_out(request):
        suffix = "?recursion=1" if recursion else ""
        for theirs in await fanout.gather_json(request, f"/1.0/operations{suffix}"):
            if isinstance(theirs, dict):
                for key, listed in theirs.items():
                    if isinstance(listed, list):
                        grouped.setdefault(str(key), []).extend(listed)
    return sync(grouped)


async def get_operation(request: web.Request) -> web.Response:
    return sync(_op(request).to_dict())


async def wait_operation(request: web.Request) -> web.Response:
    op = _op(request)
    timeout = queries.seconds(request, "timeout")
    try:
        await asyncio.wait_for(op.done.wait(), None if timeout < 0 else timeout)
    except TimeoutError:
        pass
    return sync(op.to_dict())


async def delete_operation(request: web.Request) -> web.Response:
    op = _op(request)
    if not ctx_of(request).ops.cancel(op):
        raise ApiError(400, "This operation can't be cancelled")
    return empty()


async def operation_websocket(request: web.Request) -> web.StreamResponse:
    op = _op(request)
    secret = request.query.get("secret", "")
    for fd, expected in op.secrets.items():
        if secret and hmac.compare_digest(secret, expected):
            if op.websocket is None:
                break
            return await op.websocket(request, fd)
    raise ApiError(403, "Permission denied")
