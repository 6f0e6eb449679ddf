"""``/1.0/events``: a websocket of lifecycle, operation and logging events."""

from __future__ import annotations

import asyncio
import json

from aiohttp import WSMsgType, web

from cluster.api import fanout
from cluster.api.event_hub import EVENT_TYPES
from cluster.api.handlers.common import ctx_of
from cluster.api.response import bad_request


async def events(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    wanted = {t for t in request.query.get("type", "").split(",") if t} or set(EVENT_TYPES)
    unknown = wanted - set(EVENT_TYPES)
    if unknown:
        raise bad_request(f"Unknown event type {sorted(unknown)[0]!r}")
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    queue = ctx.events.subscribe(wanted)
    reader = request.app.loop.create_task(_drain(ws))
    peers = (request.app.loop.create_task(_relay_peers(request, ws))
             if fanout.should_fan_out(request) else None)
    try:
        while not ws.closed:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await ws.send_str(json.dumps(getter.result()))
    except ConnectionResetError:
        pass
    finally:
        ctx.events.unsubscribe(queue)
        reader.cancel()
        if peers is not None:
            peers.cancel()
    return ws


async def _relay_peers(request: web.Request, ws: web.WebSocketResponse) -> None:
    """Every other member's events on the same websocket (LXD's full-mesh event mode)."""
    frames = fanout.peer_events(request, request.query_string)
    try:
        async for frame in frames:
            await ws.send_str(frame)
    except ConnectionError:
        pass
    finally:
        await frames.aclose()


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) client frames so a close is noticed."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
