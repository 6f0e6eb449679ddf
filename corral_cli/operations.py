"""``corral operation list|show|delete`` and ``corral monitor`` (the ``/1.0/events`` stream)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote, urlencode

from corral_cli import format as fmt
from corral_cli.client import Client

OPERATION_HEADER = ["ID", "TYPE", "DESCRIPTION", "STATUS", "CANCELABLE", "CREATED"]


def flatten(by_status: Any) -> list[dict[str, Any]]:
    """``GET /1.0/operations?recursion=1`` groups operations by status; list them all."""
    if isinstance(by_status, list):
        return by_status
    return [op for ops in (by_status or {}).values() for op in ops or []]


def operation_row(op: dict[str, Any]) -> list[str]:
    return [str(op.get("id", "")), str(op.get("class", "")).upper(),
            str(op.get("description", "")), str(op.get("status", "")).upper(),
            "YES" if op.get("may_cancel") else "NO",
            fmt.format_time(op.get("created_at"), "%Y/%m/%d %H:%M UTC", local=False)]


async def list_(client: Client, args: argparse.Namespace) -> int:
    ops = flatten(await client.get("/1.0/operations", params={"recursion": "1"}))
    rows = fmt.sort_rows([operation_row(op) for op in ops])
    sys.stdout.write(fmt.render(args.format, OPERATION_HEADER, rows, ops))
    return 0


async def show(client: Client, args: argparse.Namespace) -> int:
    sys.stdout.write(fmt.render_yaml(await client.get(f"/1.0/operations/{quote(args.id)}")))
    return 0


async def delete(client: Client, args: argparse.Namespace) -> int:
    await client.request("DELETE", f"/1.0/operations/{quote(args.id)}")
    print(f"Operation {args.id} deleted")
    return 0


def render_event(event: Any, output: str) -> str:
    """One event as ``lxc monitor`` prints it: sorted YAML and two blank lines, or JSON."""
    if output == "json":
        return fmt.render_json(event)
    return fmt.render_yaml(event, sort_keys=True) + "\n\n"


async def monitor(client: Client, args: argparse.Namespace) -> int:
    """Print events until the server closes the stream (or Ctrl-C)."""
    import aiohttp

    query = f"?{urlencode({'type': ','.join(args.type)})}" if args.type else ""
    ws = await client.websocket(f"/1.0/events{query}")
    try:
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            sys.stdout.write(render_event(json.loads(msg.data), args.format))
            sys.stdout.flush()
    finally:
        await ws.close()
    return 0
