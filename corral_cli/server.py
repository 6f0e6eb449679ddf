"""Commands about the daemon itself: run it, set it up, wait for it, ask its version.

``daemon`` hands the parsed namespace to ``cluster.daemon``, imported only here and by
name, so that client commands never pay for loading the server (and the client's import
contracts do not see the server). ``init --auto``/``init --join`` is a client call
(``POST /internal/init``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import time

from corral_cli import VERSION
from corral_cli.client import ApiError, Client, CliError, Unreachable


def daemon(args: argparse.Namespace) -> object:
    """``corral daemon``: run ``cluster.daemon.main(args)`` in the foreground."""
    return importlib.import_module("cluster.daemon").main(args)


INIT_OPTIONS = ("network_address", "bridge_name", "storage_path", "address", "join",
                "member_name", "witness")


async def init_cluster(args: argparse.Namespace) -> int:
    """``corral init --auto|--join``: the running daemon sets up this member
    (``POST /internal/init`` on its unix socket, ``cluster.api.handlers.bootstrap``)."""
    options = {key: getattr(args, key, None) for key in INIT_OPTIONS}
    async with Client() as client:
        await client.call("POST", "/internal/init", {k: v for k, v in options.items() if v})
    return 0


async def waitready(client: Client, args: argparse.Namespace) -> int:
    """Poll ``GET /1.0`` until the daemon answers or ``--timeout`` seconds pass."""
    deadline = time.monotonic() + args.timeout
    last: Exception | None = None
    while True:
        try:
            await client.get("/1.0")
            return 0
        except (Unreachable, ApiError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise CliError(f"Daemon still not running after {args.timeout:g}s timeout ({last})")
        await asyncio.sleep(0.1)


async def version(client: Client, args: argparse.Namespace) -> int:
    """``Client version`` and ``Server version`` lines, as ``lxc version`` prints them."""
    print(f"Client version: {VERSION}")
    try:
        server = await client.get("/1.0")
        print(f"Server version: {server.get('environment', {}).get('server_version', '')}")
    except CliError:
        print("Server version: unreachable")
    return 0
