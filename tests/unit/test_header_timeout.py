"""The API listener's header read timeout, against a real listener on loopback and on a
unix socket, with raw sockets: a slow-loris head is cut off, real clients are not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cluster.api.listener import start_runner

TIMEOUT = 0.6
HEAD = b"GET /ping HTTP/1.1\r\nHost: corral\r\n\r\n"


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


@pytest.fixture
async def endpoints(tmp_path: Path) -> AsyncIterator[dict[str, object]]:
    app = web.Application()
    app.router.add_get("/ping", _ping)
    runner = await start_runner(app, header_timeout=TIMEOUT, access_log=None)
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    unix = web.UnixSite(runner, str(tmp_path / "api.socket"))
    await unix.start()
    port = runner.addresses[0][1]
    yield {"tcp": ("127.0.0.1", port), "unix": str(tmp_path / "api.socket")}
    await runner.cleanup()


async def _connect(where: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(where, str):
        return await asyncio.open_unix_connection(where)
    assert isinstance(where, tuple)
    host, port = where
    return await asyncio.open_connection(host, port)


async def _trickle(writer: asyncio.StreamWriter, data: bytes, gap: float) -> bool:
    """Send ``data`` a byte at a time; False once the server has closed the connection."""
    for byte in data:
        if writer.is_closing():
            return False
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return False
        await asyncio.sleep(gap)
    return True


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_a_head_sent_a_byte_at_a_time_is_cut_off(endpoints: dict[str, object],
                                                       kind: str) -> None:
    reader, writer = await _connect(endpoints[kind])
    loop = asyncio.get_running_loop()
    started = loop.time()
    trickling = asyncio.create_task(_trickle(writer, HEAD, gap=0.1))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
    assert loop.time() - started < TIMEOUT + 1.0
    trickling.cancel()
    writer.close()


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_a_silent_connection_is_closed(endpoints: dict[str, object], kind: str) -> None:
    reader, writer = await _connect(endpoints[kind])
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_slow_but_timely_head_and_an_idle_keepalive_are_served(
        endpoints: dict[str, object]) -> None:
    reader, writer = await _connect(endpoints["tcp"])
    assert await _trickle(writer, HEAD, gap=TIMEOUT / len(HEAD) / 2)
    assert b"pong" in await asyncio.wait_for(reader.readuntil(b"pong"), 5)
    await asyncio.sleep(TIMEOUT * 2)  # idle between requests: not a slow head
    writer.write(HEAD)
    await writer.drain()
    assert b"pong" in await asyncio.wait_for(reader.readuntil(b"pong"), 5)
    writer.close()
