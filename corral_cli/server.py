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


INIT_OPTIONS = ("network_address", "bridge_name", "storage_path", "storage_backend", "address",
                "join", "member_name", "witness")


async def init_cluster(args: argparse.Namespace) -> int:
    """``corral init --auto|--join``: the running daemon sets up this member
    (``POST /internal/init`` on its unix socket, ``cluster.api.handlers.bootstrap``)."""
    async with Client() as client:
        await client.call("POST", "/internal/init", init_body(args))
    return 0


def init_body(args: argparse.Namespace) -> dict[str, object]:
    """The options of ``corral init`` given, as the init request names them; lxd init's
    ``--storage-create-loop GB`` and ``--storage-create-device DEV`` become the pool's
    ``storage_size`` and ``storage_path``."""
    options = {key: getattr(args, key, None) for key in INIT_OPTIONS}
    if getattr(args, "storage_create_loop", None) is not None:
        options["storage_size"] = f"{args.storage_create_loop}GiB"
    if getattr(args, "storage_create_device", None):
        options["storage_path"] = args.storage_create_device
    return {key: value for key, value in options.items() if value}


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
