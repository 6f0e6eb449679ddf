"""``corral profile ...``: list, show, create, delete, get/set/unset, devices, and
adding/removing a profile on an instance, with ``lxc``'s messages."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from corral_cli import format as fmt
from corral_cli.client import Client, CliError
from corral_cli.config import (
    Target,
    add_device,
    apply_settings,
    remove_devices,
    set_device,
    update,
)
from corral_cli.instances import parse_pairs

PROFILE_SHOW_FIELDS = ("config", "description", "devices", "name", "used_by")


def profile_rows(profiles: list[dict[str, Any]]) -> list[list[str]]:
    return fmt.sort_rows([[str(p.get("name", "")), str(p.get("description", "")),
                           str(len(p.get("used_by") or []))] for p in profiles])


async def list_(client: Client, args: argparse.Namespace) -> int:
    profiles = await client.get("/1.0/profiles", params={"recursion": "1"}) or []
    sys.stdout.write(fmt.render(args.format, ["NAME", "DESCRIPTION", "USED BY"],
                                profile_rows(profiles), profiles))
    return 0


async def show(client: Client, args: argparse.Namespace) -> int:
    profile = await client.get(Target.profile(args.name).path)
    ordered = {key: profile.get(key) for key in PROFILE_SHOW_FIELDS if key in profile}
    sys.stdout.write(fmt.render_yaml(ordered))
    return 0


async def create(client: Client, args: argparse.Namespace) -> int:
    body = {"name": args.name, "description": args.description, "config": {}, "devices": {}}
    await client.call("POST", "/1.0/profiles", body)
    print(f"Profile {args.name} created")
    return 0


async def delete(client: Client, args: argparse.Namespace) -> int:
    await client.call("DELETE", Target.profile(args.name).path)
    print(f"Profile {args.name} deleted")
    return 0


async def get(client: Client, args: argparse.Namespace) -> int:
    profile = await client.get(Target.profile(args.name).path)
    print((profile.get("config") or {}).get(args.key, ""))
    return 0


async def set_(client: Client, args: argparse.Namespace) -> int:
    """``profile set NAME KEY=VALUE...`` or ``profile set NAME KEY VALUE``."""
    items = args.settings
    settings = ({items[0]: items[1]} if len(items) == 2 and "=" not in items[0]
                else parse_pairs(items))
    await update(client, Target.profile(args.name),
                 lambda obj: apply_settings(obj["config"], settings))
    return 0


async def unset(client: Client, args: argparse.Namespace) -> int:
    await update(client, Target.profile(args.name),
                 lambda obj: obj["config"].pop(args.key, None))
    return 0


async def add(client: Client, args: argparse.Namespace) -> int:
    """Append a profile to an instance's list."""
    def change(obj: dict[str, Any]) -> None:
        profiles = list(obj.get("profiles") or [])
        if args.profile in profiles:
            raise CliError(f"Profile {args.profile} is already applied to {args.instance}")
        obj["profiles"] = [*profiles, args.profile]

    await update(client, Target.instance(args.instance), change)
    print(f"Profile {args.profile} added to {args.instance}")
    return 0


async def remove(client: Client, args: argparse.Namespace) -> int:
    def change(obj: dict[str, Any]) -> None:
        profiles = list(obj.get("profiles") or [])
        if args.profile not in profiles:
            raise CliError(f"Profile {args.profile} isn't currently applied to {args.instance}")
        obj["profiles"] = [p for p in profiles if p != args.profile]

    await update(client, Target.instance(args.instance), change)
    print(f"Profile {args.profile} removed from {args.instance}")
    return 0


async def device_add(client: Client, args: argparse.Namespace) -> int:
    await add_device(client, Target.profile(args.name), args.device, args.type, args.settings)
    return 0


async def device_remove(client: Client, args: argparse.Namespace) -> int:
    await remove_devices(client, Target.profile(args.name), args.devices)
    return 0


async def device_set(client: Client, args: argparse.Namespace) -> int:
    await set_device(client, Target.profile(args.name), args.device, args.settings)
    return 0


async def device_list(client: Client, args: argparse.Namespace) -> int:
    profile = await client.get(f"/1.0/profiles/{quote(args.name, safe='')}")
    for device in sorted(profile.get("devices") or {}):
        print(device)
    return 0


async def device_show(client: Client, args: argparse.Namespace) -> int:
    profile = await client.get(f"/1.0/profiles/{quote(args.name, safe='')}")
    sys.stdout.write(fmt.render_yaml(profile.get("devices") or {}))
    return 0
