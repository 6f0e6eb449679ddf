"""``shipper.put_stream`` against a real aiohttp server on loopback: a whole stream
arrives whole; a source that fails half-way cuts the body short, so the receiver sees a
broken stream (never a complete one); a receiver that refuses before reading stops the
source, and its reason reaches the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node_agent.replication.shipper import ShipmentFailed, put_stream

Write = Callable[[bytes], Awaitable[None]]
CHUNK = b"x" * 65536


class Receiver:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.received = 0
        self.outcome = asyncio.get_running_loop().create_future()

    async def handle(self, request: web.Request) -> web.Response:
        if self.refuse:
            return web.json_response({"error": "Stale placement epoch 0"}, status=409)
        try:
            async for chunk in request.content.iter_chunked(1 << 16):
                self.received += len(chunk)
        except BaseException as exc:  # aiohttp cancels the handler when the peer hangs up
            self.outcome.set_result(f"broken: {type(exc).__name__}")
            raise
        self.outcome.set_result("whole")
        return web.json_response({"bytes": self.received, "query": dict(request.query)})


@pytest.fixture
async def served() -> AsyncIterator[tuple[Receiver, str, aiohttp.ClientSession]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_put("/r", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield receiver, str(server.make_url("/r")), session
    finally:
        await server.close()


async def test_a_whole_stream_arrives_whole(
        served: tuple[Receiver, str, aiohttp.ClientSession]) -> None:
    receiver, url, session = served

    async def produce(write: Write) -> int:
        for _ in range(40):
            await write(CHUNK)
        return 40 * len(CHUNK)

    assert await put_stream(session, url, {"snapshot": "s"}, produce) == 40 * len(CHUNK)
    assert await receiver.outcome == "whole" and receiver.received == 40 * len(CHUNK)


async def test_a_failing_source_cuts_the_stream_short(
        served: tuple[Receiver, str, aiohttp.ClientSession]) -> None:
    receiver, url, session = served

    async def produce(write: Write) -> int:
        for _ in range(5):
            await write(CHUNK)
        raise OSError("tar: read error")

    with pytest.raises(ShipmentFailed, match="tar: read error"):
        await put_stream(session, url, {}, produce)
    assert (await asyncio.wait_for(receiver.outcome, 10)).startswith("broken")


async def test_a_refusal_stops_the_source_and_says_why(
        served: tuple[Receiver, str, aiohttp.ClientSession]) -> None:
    receiver, url, session = served
    receiver.refuse = True
    stopped = asyncio.Event()

    async def produce(write: Write) -> int:
        try:
            while True:  # a big volume: it would never end by itself
                await write(CHUNK)
        finally:
            stopped.set()

    with pytest.raises(ShipmentFailed, match="refused \\(409\\): Stale placement epoch 0"):
        await asyncio.wait_for(put_stream(session, url, {}, produce), 20)
    assert stopped.is_set()
