"""Cluster-wide views built from every member: LXD lists the operations of all members
and streams every member's events from any one of them. Members that cannot be reached
are left out (as LXD leaves out offline members), never waited for past a short timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from cluster.api import proxy
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.state.apply_members import member_status

PEER_TIMEOUT = 3.0
RECONNECT_SECONDS = 2.0


def other_members(ctx: Context) -> list[tuple[str, str]]:
    """``(name, address)`` of the other online members; none when not clustered."""
    if ctx.local is None or not ctx.local.clustered:
        return []
    with ctx.store.read() as state:
        return [(m.name, m.address) for m in state.members.values()
                if m.name != ctx.member and m.address and member_status(m) != "OFFLINE"]


def should_fan_out(request: web.Request) -> bool:
    return not proxy.is_forwarded(request) and bool(other_members(ctx_of(request)))


async def gather_json(request: web.Request, path: str) -> list[Any]:
    """The ``metadata`` of ``GET path`` on every other online member that answers."""
    ctx = ctx_of(request)
    session = proxy.session_for(request)
    ssl = proxy.ssl_context_for(request, ctx)

    async def one(address: str) -> Any:
        try:
            async with session.get(f"https://{address}{path}", ssl=ssl,
                                   headers={proxy.FORWARDED_HEADER: "1"},
                                   timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT)) as resp:
                if resp.status != 200:
                    return None
                return json.loads(await resp.read()).get("metadata")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    answers = await asyncio.gather(*(one(a) for _, a in other_members(ctx)))
    return [a for a in answers if a is not None]


async def peer_events(request: web.Request, query: str) -> AsyncGenerator[str, None]:
    """Event frames from every other member, as text, for as long as the caller reads.
    Members are (re)connected every few seconds, so members that join or come back
    are picked up."""
    ctx = ctx_of(request)
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
    feeds: dict[str, asyncio.Task[None]] = {}

    async def feed(address: str) -> None:
        session = proxy.session_for(request)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.ws_connect(
                    f"https://{address}/1.0/events?{query}",
                    ssl=proxy.ssl_context_for(request, ctx),
                    headers={proxy.FORWARDED_HEADER: "1"}, heartbeat=30) as ws:
                async for msg in ws:
                    if msg.type is not WSMsgType.TEXT:
                        break
                    if not queue.full():
                        queue.put_nowait(msg.data)

    async def connect() -> None:
        while True:
            for name, address in other_members(ctx):
                task = feeds.get(name)
                if task is None or task.done():
                    feeds[name] = asyncio.create_task(feed(address))
            await asyncio.sleep(RECONNECT_SECONDS)

    connector = asyncio.create_task(connect())
    try:
        while True:
            yield await queue.get()
    finally:
        connector.cancel()
        for task in feeds.values():
            task.cancel()
        await asyncio.gather(connector, *feeds.values(), return_exceptions=True)
