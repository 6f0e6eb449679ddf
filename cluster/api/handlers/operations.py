"""``/1.0/operations``: list, get, wait, cancel, and the websocket of an operation.

An operation is either this member's (``api/op_registry.py``, in memory) or an intent's
(a move, an evacuation: ``api/intent_ops.py``), which every member renders from its
replica."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from cluster.api import fanout, intent_ops, queries
from cluster.api.handlers.common import ctx_of
from cluster.api.op_registry import Operation
from cluster.api.response import ApiError, empty, not_found, sync


def _op(request: web.Request) -> Operation:
    op = ctx_of(request).ops.get(request.match_info["id"])
    if op is None:
        raise not_found("Operation not found")
    return op


def _group(doc: dict[str, object]) -> str:
    status = str(doc["status"])
    return "running" if status in ("Running", "Cancelling") else status.lower()


async def list_operations(request: web.Request) -> web.Response:
    """This member's operations, the intents' and, in a cluster, every other online
    member's (LXD); an intent every member lists is shown once."""
    ctx = ctx_of(request)
    recursion = queries.recursion(request)
    grouped: dict[str, list[object]] = {}
    seen: set[object] = set()
    for doc in [op.to_dict() for op in ctx.ops.all()] + intent_ops.all_rendered(ctx.store):
        listed = doc if recursion else f"/1.0/operations/{doc['id']}"
        seen.add(doc["id"] if recursion else listed)
        grouped.setdefault(_group(doc), []).append(listed)
    if fanout.should_fan_out(request):
        suffix = "?recursion=1" if recursion else ""
        for theirs in await fanout.gather_json(request, f"/1.0/operations{suffix}"):
            if isinstance(theirs, dict):
                for key, listed in theirs.items():
                    if isinstance(listed, list):
                        for one in listed:
                            mark = one.get("id") if isinstance(one, dict) else one
                            if mark not in seen:
                                seen.add(mark)
                                grouped.setdefault(str(key), []).append(one)
    return sync(grouped)


async def get_operation(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    op_id = request.match_info["id"]
    if ctx.ops.get(op_id) is None:
        doc = intent_ops.find(ctx.store, op_id)
        if doc is not None:
            return sync(doc)
    return sync(_op(request).to_dict())


async def wait_operation(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    timeout = queries.seconds(request, "timeout")
    if ctx.ops.get(request.match_info["id"]) is None:
        doc = await intent_ops.wait(ctx.store, request.match_info["id"], timeout)
        if doc is not None:
            return sync(doc)
    op = _op(request)
    try:
        await asyncio.wait_for(op.done.wait(), None if timeout < 0 else timeout)
    except TimeoutError:
        pass
    return sync(op.to_dict())


async def delete_operation(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    op_id = request.match_info["id"]
    if ctx.ops.get(op_id) is None and intent_ops.find(ctx.store, op_id) is not None:
        await intent_ops.cancel(ctx.store, op_id)
        return empty()
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
