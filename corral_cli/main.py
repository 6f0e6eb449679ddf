"""``corral``: the LXD-compatible command-line client (and the entry point of the daemon).

Flow::

    argv --parser.parse_args--> Namespace(handler="module:function", ...)
         --dispatch--> corral_cli.<module>.<function>(client, args) -> exit code
                       (server:daemon and server:init --auto run without a client)

Handlers raise ``CliError``; it is printed here, once, as ``Error: <message>``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from corral_cli.client import Client, CliError
from corral_cli.parser import parse_args
from corral_cli.remote_config import resolve as resolve_remote

# Handlers that run without a connection to the daemon (they start it or set it up).
LOCAL_HANDLERS = {"server:daemon", "server:init_cluster", "devcluster:up", "devcluster:down",
                  "devcluster:kill", "devcluster:start", "devcluster:partition",
                  "devcluster:heal", "devcluster:corrupt", "devcluster:disk"}
# ``corral remote ...`` edits $CORRAL_CONF (and talks to the remote itself).
LOCAL_HANDLERS |= {"remote_cmds:add", "remote_cmds:list_", "remote_cmds:remove",
                   "remote_cmds:switch", "remote_cmds:get_default"}


def resolve(handler: str) -> Callable[..., Any]:
    """Import ``corral_cli.<module>`` and return its handler function."""
    module_name, func_name = handler.split(":")
    module = importlib.import_module(f"corral_cli.{module_name}")
    func: Callable[..., Any] = getattr(module, func_name)
    return func


async def _run_with_client(func: Callable[..., Any], args: argparse.Namespace) -> int:
    async with Client(remote=resolve_remote(args)) as client:  # REMOTE:NAME arguments, over HTTPS
        return int(await func(client, args) or 0)


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command and return its exit code."""
    func = resolve(args.handler)
    if args.handler in LOCAL_HANDLERS:
        result = func(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return int(result or 0)
    return asyncio.run(_run_with_client(func, args))


async def _await(awaitable: Any) -> Any:
    return await awaitable


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: exit codes are 0, 1 for errors, or the exec'd command's code."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return dispatch(args)
    except CliError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
