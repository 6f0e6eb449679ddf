"""``/1.0/instances/<name>/console``: a VM's serial console, in LXD's shape.

``POST`` starts a websocket operation with fds ``0`` (the console's bytes, both ways) and
``control`` (accepted; a serial line has no window size); ``GET`` returns the console
log; ``DELETE`` empties it. Containers have no console here (use ``exec``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of, instance_copy, live_statuses
from cluster.api.op_registry import Operation
from cluster.api.response import ApiError, async_operation, bad_request, empty

CHUNK = 1 << 16


def _vm_dir(ctx: Context, name: str) -> Path:
    inst = instance_copy(ctx, name)
    if inst.type != "virtual-machine":
        raise bad_request("Only virtual machines have a console here; use exec for "
                          "containers")
    return ctx.host.vm_console_dir(name)


async def get_log(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    log = _vm_dir(ctx, request.match_info["name"]) / "console.log"
    text = await asyncio.to_thread(lambda: log.read_bytes() if log.is_file() else b"")
    return web.Response(body=text, content_type="text/plain")


async def clear_log(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    log = _vm_dir(ctx, request.match_info["name"]) / "console.log"
    await asyncio.to_thread(lambda: log.is_file() and log.write_bytes(b""))
    return empty()


async def attach(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    await json_body(request, schemas.Console)
    directory = _vm_dir(ctx, name)
    inst = instance_copy(ctx, name)
    if (await live_statuses(ctx, [inst]))[name] != "Running":
        raise bad_request("Instance is not running")
    session = _ConsoleSession(directory / "console.sock")

    def prepare(op: Operation) -> None:
        op.metadata["fds"] = {fd: op.new_secret(fd) for fd in ("0", "control")}
        op.websocket = session.websocket

    op = ctx.ops.start("Showing console", session.run,
                       {"instances": [f"/1.0/instances/{name}"]}, class_="websocket",
                       prepare=prepare)
    return async_operation(op.to_dict())


class _ConsoleSession:
    """Bridges the data websocket to QEMU's serial socket until either side closes."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.done = asyncio.Event()
        self.claimed: set[str] = set()

    async def run(self, op: Operation) -> dict[str, Any] | None:
        await self.done.wait()
        return None

    async def websocket(self, request: web.Request, fd: str) -> web.StreamResponse:
        if fd in self.claimed:
            raise ApiError(400, "Websocket number already connected")
        self.claimed.add(fd)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if fd == "control":
            async for msg in ws:  # window sizes mean nothing to a serial line
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
            return ws
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:
            await ws.close(message=f"console unavailable: {exc}".encode()[:120])
            self.done.set()
            return ws
        pumps = [asyncio.create_task(_from_console(reader, ws)),
                 asyncio.create_task(_to_console(ws, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await ws.close()
            self.done.set()
        return ws


async def _from_console(reader: asyncio.StreamReader, ws: web.WebSocketResponse) -> None:
    while data := await reader.read(CHUNK):
        await ws.send_bytes(data)


async def _to_console(ws: web.WebSocketResponse, writer: asyncio.StreamWriter) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            writer.write(msg.data)
        elif msg.type is WSMsgType.TEXT:
            writer.write(msg.data.encode())
        else:
            break
        await writer.drain()


ROUTES = [
    ("GET", "/1.0/instances/{name}/console", get_log),
    ("POST", "/1.0/instances/{name}/console", attach),
    ("DELETE", "/1.0/instances/{name}/console", clear_log),
]
