"""Parsing ``corral``'s argv: the command tree (``commands.py``) plus ``lxc``'s quirks.

``exec`` keeps everything after ``--`` verbatim, ``-q`` may appear anywhere, and
``init --auto``/``--join`` is routed to cluster bootstrap instead of instance creation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from corral_cli import VERSION
from corral_cli.client import UsageError
from corral_cli.commands import build_parser

__all__ = ["VERSION", "build_parser", "parse_args"]

GLOBAL_QUIET = ("-q", "--quiet")
# Commands whose unknown flags are passed through (as ``args.extra``) to code the lead owns.
PASS_THROUGH = {"server:daemon", "server:init_cluster"}


def _verb(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; ``exec``'s command after ``--`` is kept verbatim, as ``lxc`` does."""
    argv = list(argv)
    tail: list[str] = []
    if _verb(argv) == "exec" and "--" in argv:
        split = argv.index("--")
        argv, tail = argv[:split], argv[split + 1:]
    # Global flags may appear anywhere, as with lxc (cobra's persistent flags).
    quiet = any(a in GLOBAL_QUIET for a in argv)
    argv = [a for a in argv if a not in GLOBAL_QUIET]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.quiet = quiet
    if args.handler is None:
        args.group_parser.print_help(sys.stderr)
        raise UsageError("a command is required")
    if args.handler == "instances:init" and (args.auto or args.join is not None):
        args.handler = "server:init_cluster"
    if extra and args.handler not in PASS_THROUGH:
        parser.error("unrecognized arguments: " + " ".join(extra))
    args.extra = extra
    if args.handler == "exec:run":
        args.command = list(args.command) + tail
    return args
