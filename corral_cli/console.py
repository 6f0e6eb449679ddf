"""``corral console NAME``: attach to a VM's serial console (LXD's console websocket);
``--show-log`` prints what the console has written so far. Detach with ctrl+a q."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from urllib.parse import quote

from aiohttp import WSMsgType

from corral_cli.client import Client, error_from
from corral_cli.exec import StdinReader, raw_terminal

DETACH = b"\x01q"  # ctrl+a q, as lxc console


async def run(client: Client, args: argparse.Namespace) -> int:
    path = f"/1.0/instances/{quote(args.name, safe='')}/console"
    if args.show_log:
        async with client.raw("GET", path) as resp:
            text = await resp.read()
            if resp.status >= 300:
                raise error_from(resp.status, text.decode(errors="replace"))
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return 0
    reply = await client.request("POST", path, body={"width": 0, "height": 0,
                                                     "type": "console"})
    fds = (reply.metadata or {}).get("fds") or {}
    op = reply.operation
    data = await client.websocket(f"{op}/websocket?secret={fds['0']}")
    control = await client.websocket(f"{op}/websocket?secret={fds['control']}")
    interactive = sys.stdin.isatty()
    if interactive:
        print("To detach from the console, press: <ctrl>+a q", file=sys.stderr)
    stdin = StdinReader(sys.stdin.fileno())

    async def upstream() -> None:
        last = b""
        while chunk := await stdin.queue.get():
            if interactive and (last + chunk).find(DETACH) >= 0:
                return
            last = chunk[-1:]
            await data.send_bytes(chunk)

    async def downstream() -> None:
        async for msg in data:
            if msg.type is WSMsgType.BINARY:
                os.write(sys.stdout.fileno(), msg.data)
            elif msg.type is not WSMsgType.TEXT:
                return

    with raw_terminal(sys.stdin.fileno(), interactive):
        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
    await data.close()
    await control.close()
    return 0
