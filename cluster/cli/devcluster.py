"""``corral dev-cluster up|down``: run without a daemon connection (they make the daemons).

Coroutines like every other handler, though they block: no other task runs, and Ctrl-C
must interrupt ``up`` itself so that it removes what it made.

``cluster.devcluster`` is imported by name, as ``server.py`` imports the daemon, so that
client commands never load the harness.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from cluster.cli.client import CliError


async def up(args: argparse.Namespace) -> int:
    """``corral dev-cluster up --nodes N [--dir DIR]``; prints how to reach each member."""
    dev = importlib.import_module("cluster.devcluster")
    try:
        dev.up(args.nodes, Path(args.dir))  # blocking on purpose: Ctrl-C must reach it
    except (dev.DevClusterError, AssertionError, OSError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    return 0


async def down(args: argparse.Namespace) -> int:
    """``corral dev-cluster down [--dir DIR]``: removes everything ``up`` made."""
    dev = importlib.import_module("cluster.devcluster")
    for item in dev.down(Path(args.dir)):
        print(f"removed {item}")
    return 0
