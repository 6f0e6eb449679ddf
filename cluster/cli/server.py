"""Commands about the daemon itself: run it, set it up, wait for it, ask its version.

``daemon`` and ``init --auto``/``init --join`` hand the parsed namespace to code in
``cluster.daemon`` and ``cluster.bootstrap``, imported only here so that client commands
never pay for loading the server (and by name, so type-checking the client does not
type-check the server).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import time

from cluster.cli import VERSION
from cluster.cli.client import ApiError, Client, CliError, Unreachable


def daemon(args: argparse.Namespace) -> object:
    """``corral daemon``: run ``cluster.daemon.main(args)`` in the foreground."""
    return importlib.import_module("cluster.daemon").main(args)


def init_cluster(args: argparse.Namespace) -> object:
    """``corral init --auto|--join``: ``cluster.bootstrap.init_auto(args)`` sets up this member."""
    return importlib.import_module("cluster.bootstrap").init_auto(args)


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
