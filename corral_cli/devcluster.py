"""``corral dev-cluster up|down|kill|start|partition|heal``: run without a daemon
connection (they make, break and mend the daemons; ``devtools.nemesis`` for the faults).

Coroutines like every other handler, though they block: no other task runs, and Ctrl-C
must interrupt ``up`` itself so that it removes what it made.

``devtools.devcluster`` is imported by name, as ``server.py`` imports the daemon, so that
client commands never load the harness.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from corral_cli.client import CliError


async def up(args: argparse.Namespace) -> int:
    """``corral dev-cluster up --nodes N [--witness] [--dir DIR]``; prints how to reach
    each member (with ``--witness`` the last one joins as a witness)."""
    dev = importlib.import_module("devtools.devcluster")
    try:
        # Blocking on purpose: Ctrl-C must reach it.
        dev.up(args.nodes, Path(args.dir), witness=args.witness)
    except (dev.DevClusterError, AssertionError, OSError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    return 0


async def down(args: argparse.Namespace) -> int:
    """``corral dev-cluster down [--dir DIR]``: removes everything ``up`` made."""
    dev = importlib.import_module("devtools.devcluster")
    for item in dev.down(Path(args.dir)):
        print(f"removed {item}")
    return 0


def _nemesis() -> Any:
    return importlib.import_module("devtools.nemesis")


async def kill(args: argparse.Namespace) -> int:
    """``corral dev-cluster kill MEMBER [--signal KILL|STOP|CONT] [--host]``."""
    nemesis = _nemesis()
    try:
        pid = nemesis.kill(Path(args.dir), args.member, args.signal, host=args.host)
    except nemesis.NemesisError as exc:
        raise CliError(str(exc)) from exc
    if args.host:
        print(f"killed {args.member}'s whole host (daemon pid {pid or 'not running'}, "
              "its containers and VMs)")
        return 0
    print(f"sent SIG{args.signal.upper().removeprefix('SIG')} to {args.member} (pid {pid})")
    return 0


async def start(args: argparse.Namespace) -> int:
    """``corral dev-cluster start MEMBER``: its daemon again, on its existing state."""
    nemesis = _nemesis()
    try:
        pid = nemesis.start(Path(args.dir), args.member, clock_offset=args.clock_offset)
    except nemesis.NemesisError as exc:
        raise CliError(str(exc)) from exc
    offset = "" if args.clock_offset is None else f", clock {args.clock_offset:+g} s"
    print(f"started {args.member} (pid {pid}{offset})")
    return 0


async def partition(args: argparse.Namespace) -> int:
    """``corral dev-cluster partition MEMBER[,MEMBER...] [--one-way]``, or
    ``partition [MEMBER] --side minority|majority`` (a side holding MEMBER)."""
    nemesis = _nemesis()
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    try:
        if args.side:
            if len(names) > 1:
                raise nemesis.NemesisError("--side takes at most one MEMBER")
            names = nemesis.side(
                [m.name for m in nemesis.members_of(_read_state(args.dir))], args.side,
                names[0] if names else None)
        elif not names:
            raise nemesis.NemesisError("name the members to cut off, or give --side")
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


def _read_state(directory: str) -> dict[str, Any]:
    state: dict[str, Any] = importlib.import_module("devtools.devcluster").read_state(
        Path(directory).resolve())
    return state


async def corrupt(args: argparse.Namespace) -> int:
    """``corral dev-cluster corrupt MEMBER --file journal|snapshot --how flip|truncate``."""
    disk = importlib.import_module("devtools.nemesis_disk")
    try:
        done = disk.corrupt(Path(args.dir), args.member, args.file, args.how)
    except disk.NemesisError as exc:
        raise CliError(str(exc)) from exc
    print(f"{done}; start it with: corral dev-cluster start {args.member}")
    return 0


async def disk(args: argparse.Namespace) -> int:
    """``corral dev-cluster disk MEMBER attach|fill|free|detach [--size MIB]``."""
    module = importlib.import_module("devtools.nemesis_disk")
    directory = Path(args.dir)
    try:
        if args.action == "attach":
            image = module.attach_disk(directory, args.member, args.size)
            print(f"{args.member}/raft is now a {args.size} MiB file system ({image})")
        elif args.action == "fill":
            print(f"filled {args.member}'s disk: "
                  f"{module.fill_disk(directory, args.member)} bytes")
        elif args.action == "free":
            freed = module.free_disk(directory, args.member)
            print(f"freed {args.member}'s disk" if freed else "nothing to free")
        else:
            detached = module.detach_disk(directory, args.member)
            print(f"detached {args.member}'s disk, contents copied back" if detached
                  else f"{args.member} has no disk")
    except module.NemesisError as exc:
        raise CliError(str(exc)) from exc
    return 0
