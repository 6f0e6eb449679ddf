"""``corral metrics [REMOTE:] [--scope cluster]``: the Prometheus text of ``/1.0/metrics``,
as a scraper sees it (one member's, or with ``--scope cluster`` every member's under a
``member`` label)."""

from __future__ import annotations

import argparse
import sys

from corral_cli.client import Client


async def show(client: Client, args: argparse.Namespace) -> int:
    params = {"scope": args.scope} if args.scope != "member" else None
    sys.stdout.write(await client.get_text("/1.0/metrics", params=params))
    return 0
