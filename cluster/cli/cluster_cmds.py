"""``corral cluster ...``: members of the cluster, as ``lxc cluster`` does it."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import quote

from cluster.cli import format as fmt
from cluster.cli.client import Client, UsageError


async def list_(client: Client, args: argparse.Namespace) -> int:
    members = await client.get("/1.0/cluster/members", params={"recursion": "1"}) or []
    rows = [[str(m.get("server_name", "")), str(m.get("url", "")),
             "\n".join(m.get("roles") or []), str(m.get("architecture", "")),
             str(m.get("status", "")).upper(), str(m.get("message", ""))] for m in members]
    header = ["NAME", "URL", "ROLES", "ARCHITECTURE", "STATUS", "MESSAGE"]
    sys.stdout.write(fmt.render(args.format, header, fmt.sort_rows(rows), members))
    return 0


async def show(client: Client, args: argparse.Namespace) -> int:
    member = await client.get(f"/1.0/cluster/members/{quote(args.name, safe='')}")
    sys.stdout.write(fmt.render_yaml(member))
    return 0


async def add(client: Client, args: argparse.Namespace) -> int:
    """Print a single-use join token for the new member NAME."""
    if not args.name:
        raise UsageError("The new member's name is required")
    reply = await client.request("POST", "/1.0/cluster/members",
                                 body={"server_name": args.name})
    meta = reply.metadata or {}
    print(f"Member {args.name} join token:")
    print(meta["token"])
    return 0


async def remove(client: Client, args: argparse.Namespace) -> int:
    force = "?force=1" if args.force else ""
    await client.request("DELETE", f"/1.0/cluster/members/{quote(args.name, safe='')}{force}")
    return 0
