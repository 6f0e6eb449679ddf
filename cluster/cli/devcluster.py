"""``corral dev-cluster up|down|kill|start|partition|heal``: run without a daemon
connection (they make, break and mend the daemons; ``cluster.nemesis`` for the faults).

Coroutines like every other handler, though they block: no other task runs, and Ctrl-C
must interrupt ``up`` itself so that it removes what it made.

``cluster.devcluster`` is imported by name, as ``server.py`` imports the daemon, so that
client commands never load the harness.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

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


def _nemesis() -> Any:
    return importlib.import_module("cluster.nemesis")


async def kill(args: argparse.Namespace) -> int:
    """``corral dev-cluster kill MEMBER [--signal KILL|STOP|CONT]``."""
    nemesis = _nemesis()
    try:
        pid = nemesis.kill(Path(args.dir), args.member, args.signal)
    except nemesis.NemesisError as exc:
        raise CliError(str(exc)) from exc
    print(f"sent SIG{args.signal.upper().removeprefix('SIG')} to {args.member} (pid {pid})")
    return 0


async def start(args: argparse.Namespace) -> int:
    """``corral dev-cluster start MEMBER``: its daemon again, on its existing state."""
    nemesis = _nemesis()
    try:
        pid = nemesis.start(Path(args.dir), args.member)
    except nemesis.NemesisError as exc:
        raise CliError(str(exc)) from exc
    print(f"started {args.member} (pid {pid})")
    return 0


async def partition(args: argparse.Namespace) -> int:
    """``corral dev-cluster partition MEMBER[,MEMBER...] [--one-way]``."""
    nemesis = _nemesis()
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    try:
        added = nemesis.partition(Path(args.dir), names, one_way=args.one_way)
    except nemesis.NemesisError as exc:
        raise CliError(str(exc)) from exc
    way = "from the rest into them" if args.one_way else "both ways"
    print(f"partitioned {', '.join(names)} from the rest ({way}): {added} rule(s)")
    return 0


async def heal(args: argparse.Namespace) -> int:
    """``corral dev-cluster heal``: remove every partition rule."""
    nemesis = _nemesis()
    try:
        removed = nemesis.heal(Path(args.dir))
    except nemesis.NemesisError as exc:
        raise CliError(str(exc)) from exc
    print(f"healed: removed {removed} rule(s)")
    return 0
