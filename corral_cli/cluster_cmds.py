"""``corral cluster ...``: members of the cluster, as ``lxc cluster`` does it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from corral_cli import format as fmt
from corral_cli.client import Client, UsageError
from corral_cli.progress import Progress


def usage(member: dict[str, Any], dimension: str) -> str:
    """``used/schedulable`` of one dimension of a member's ``placement`` (``2/32``,
    ``1.00GiB/3.84GiB``): what the scheduler compares a demand with. ``?`` where the
    member has not reported that capacity; empty from a server without the field."""
    found = (member.get("placement") or {}).get(dimension)
    if not isinstance(found, dict):
        return ""

    def amount(value: object) -> str:
        if not isinstance(value, (int, float)):
            return "?"
        return f"{value:g}" if dimension == "cpu" else fmt.byte_size_iec(value)

    return f"{amount(found.get('used'))}/{amount(found.get('schedulable'))}"


async def list_(client: Client, args: argparse.Namespace) -> int:
    """Members, with CPU and MEMORY as used/schedulable (capacity x allocation ratio)."""
    members = await client.get("/1.0/cluster/members", params={"recursion": "1"}) or []
    rows = [[str(m.get("server_name", "")), str(m.get("url", "")),
             "\n".join(m.get("roles") or []), str(m.get("architecture", "")),
             usage(m, "cpu"), usage(m, "memory"),
             str(m.get("status", "")).upper(), str(m.get("message", ""))] for m in members]
    header = ["NAME", "URL", "ROLES", "ARCHITECTURE", "CPU", "MEMORY", "STATUS", "MESSAGE"]
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


def _path(name: str) -> str:
    return f"/1.0/cluster/members/{quote(name, safe='')}"


async def _roles(client: Client, args: argparse.Namespace, adding: bool) -> int:
    asked = [r.strip() for r in args.roles.split(",") if r.strip()]
    if not asked:
        raise UsageError("Name at least one role")
    member = await client.get(_path(args.name))
    roles = [r for r in member.get("roles") or [] if r != "database-leader"]
    if adding:
        roles += [r for r in asked if r not in roles]
    else:
        missing = [r for r in asked if r not in roles]
        if missing:
            raise UsageError(f"Member {args.name} does not have role(s) {', '.join(missing)}")
        roles = [r for r in roles if r not in asked]
    await client.request("PATCH", _path(args.name), body={"roles": roles})
    return 0


async def role_add(client: Client, args: argparse.Namespace) -> int:
    return await _roles(client, args, adding=True)


async def role_remove(client: Client, args: argparse.Namespace) -> int:
    return await _roles(client, args, adding=False)


async def set_(client: Client, args: argparse.Namespace) -> int:
    await client.request("PATCH", _path(args.name), body={"config": {args.key: args.value}})
    return 0


async def unset(client: Client, args: argparse.Namespace) -> int:
    member = await client.get(_path(args.name))
    config = {k: v for k, v in (member.get("config") or {}).items() if k != args.key}
    await client.request("PUT", _path(args.name), body={
        "config": config, "groups": member.get("groups") or [],
        "description": member.get("description", "")})
    return 0


async def get(client: Client, args: argparse.Namespace) -> int:
    member = await client.get(_path(args.name))
    print((member.get("config") or {}).get(args.key, ""))
    return 0


async def _member_state(client: Client, args: argparse.Namespace, action: str) -> int:
    body = {"action": action, "mode": args.action if action == "evacuate" else ""}
    progress = Progress(f"{action.capitalize()}: {{}}", quiet=getattr(args, "quiet", False))
    try:
        await client.call("POST", _path(args.name) + "/state", body, progress=progress)
    finally:
        progress.done()
    return 0


async def evacuate(client: Client, args: argparse.Namespace) -> int:
    return await _member_state(client, args, "evacuate")


async def restore(client: Client, args: argparse.Namespace) -> int:
    return await _member_state(client, args, "restore")


async def group_assign(client: Client, args: argparse.Namespace) -> int:
    """As ``lxc cluster group assign``: the member's groups become exactly GROUPS."""
    wanted = [g.strip() for g in args.groups.split(",") if g.strip()]
    await client.request("PATCH", _path(args.name), body={"groups": wanted})
    return 0


async def check(client: Client, args: argparse.Namespace) -> int:
    """``corral cluster check``: compare every member's replica at one Raft index (a
    marker the server commits). Prints ``replicas agree at index N`` and returns 0, or
    names the members that differ or are behind and returns 1 (a script's test)."""
    verdict = await client.request("POST", "/1.0/cluster/check",
                                   body={"timeout": args.timeout})
    meta: dict[str, Any] = verdict.metadata or {}
    if args.format == "json":
        print(json.dumps(meta, indent=2, sort_keys=True))
    else:
        print(describe_verdict(meta))
    return 0 if meta.get("agree") else 1


def describe_verdict(meta: dict[str, Any]) -> str:
    """The server's verdict for a human: one line when the replicas agree, else a line
    per member that differs (with its digest's start) or gave none (with why)."""
    if meta.get("agree"):
        return f"replicas agree at index {meta.get('index')}"
    index = meta.get("index")
    if index is None:
        lines = ["replicas differ: no digest is held by more members than any other"]
    elif meta.get("differ"):
        lines = [f"replicas differ at index {index}"]
    else:
        lines = [f"replicas not all compared at index {index}: some gave no digest"]
    reports = {r.get("name"): r for r in meta.get("members") or [] if isinstance(r, dict)}
    for name in meta.get("differ") or []:
        r = reports.get(name, {})
        lines.append(f"  {name}: digest {str(r.get('digest'))[:16]} at index {r.get('index')}")
    for name in meta.get("missing") or []:
        r = reports.get(name, {})
        lines.append(f"  {name}: {r.get('error') or r.get('digest') or 'no digest'}")
    return "\n".join(lines)
