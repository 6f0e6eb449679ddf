"""``corral config ...``: instance and server configuration, and instance devices.

Every change is ``lxc``'s read-modify-write: GET the object (keeping its ``ETag``), change
it, PUT back only its writable fields with ``If-Match``, so a concurrent change makes the
server answer 412 instead of being overwritten silently. The device helpers are shared
with ``corral profile device``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from corral_cli import format as fmt
from corral_cli.client import Client, CliError, UsageError
from corral_cli.instances import parse_pairs, split_snapshot

INSTANCE_FIELDS = ("architecture", "config", "devices", "ephemeral", "profiles", "stateful",
                   "description")
PROFILE_FIELDS = ("config", "description", "devices")
SERVER_FIELDS = ("config",)


@dataclass(frozen=True)
class Target:
    """Something with config and devices: its URL, writable fields and name for messages."""

    path: str
    fields: tuple[str, ...]
    name: str

    @staticmethod
    def instance(name: str) -> Target:
        return Target(f"/1.0/instances/{quote(name, safe='')}", INSTANCE_FIELDS, name)

    @staticmethod
    def profile(name: str) -> Target:
        return Target(f"/1.0/profiles/{quote(name, safe='')}", PROFILE_FIELDS, name)

    @staticmethod
    def server() -> Target:
        return Target("/1.0", SERVER_FIELDS, "")


def writable(obj: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """The PUT body: only the writable fields, with ``{}`` for missing maps."""
    body = {key: obj.get(key) for key in fields}
    for key in ("config", "devices"):
        if key in body and body[key] is None:
            body[key] = {}
    return body


async def update(client: Client, target: Target, change: Callable[[dict[str, Any]], None]) -> None:
    """GET, ``change`` in place, PUT with ``If-Match`` (and wait if the server answers async)."""
    obj, etag = await client.get_etag(target.path)
    for key in ("config", "devices"):
        if obj.get(key) is None:
            obj[key] = {}
    change(obj)
    await client.call("PUT", target.path, writable(obj, target.fields), etag=etag)


def is_config_key(text: str) -> bool:
    return "." in text.split(":", 1)[-1]


def split_set_args(args: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """lxc's reading of ``config set``: ``[INSTANCE] KEY=VALUE...`` or ``[INSTANCE] KEY VALUE``.

    Returns ``(instance or None for the server, settings)``.
    """
    if not args:
        raise UsageError("Invalid number of arguments")
    only_pairs = all("=" in a for a in args)
    server = only_pairs or (len(args) == 2 and is_config_key(args[0]) and "=" not in args[0])
    name, rest = (None, list(args)) if server else (args[0], list(args[1:]))
    if not rest:
        raise UsageError("Invalid number of arguments")
    if len(rest) == 2 and "=" not in rest[0]:
        value = sys.stdin.read() if rest[1] == "-" else rest[1]
        return name, {rest[0]: value}
    return name, parse_pairs(rest)


def apply_settings(config: dict[str, Any], settings: dict[str, str]) -> None:
    """Set keys; an empty value removes the key, as ``unset`` does."""
    for key, value in settings.items():
        if value == "":
            config.pop(key, None)
        else:
            config[key] = value


def _target_for(name: str | None) -> Target:
    if name is None:
        return Target.server()
    if "/" in name:
        raise UsageError("Snapshots are read-only")
    return Target.instance(name)


async def set_(client: Client, args: argparse.Namespace) -> int:
    name, settings = split_set_args(args.args)
    await update(client, _target_for(name), lambda obj: apply_settings(obj["config"], settings))
    return 0


async def unset(client: Client, args: argparse.Namespace) -> int:
    if len(args.args) not in (1, 2):
        raise UsageError("Invalid number of arguments")
    name = args.args[0] if len(args.args) == 2 else None
    key = args.args[-1]
    await update(client, _target_for(name), lambda obj: obj["config"].pop(key, None))
    return 0


async def get(client: Client, args: argparse.Namespace) -> int:
    if len(args.args) not in (1, 2):
        raise UsageError("Invalid number of arguments")
    key = args.args[-1]
    if len(args.args) == 1:
        obj = await client.get("/1.0")
        print((obj.get("config") or {}).get(key, ""))
        return 0
    name, snap = split_snapshot(args.args[0])
    path = Target.instance(name).path + (f"/snapshots/{quote(snap, safe='')}" if snap else "")
    obj = await client.get(path)
    config = obj.get("expanded_config" if args.expanded else "config") or {}
    print(config.get(key, ""))
    return 0


async def show(client: Client, args: argparse.Namespace) -> int:
    """YAML of the writable part, as ``lxc config show`` prints it (``-e``: expanded)."""
    if not args.name:
        sys.stdout.write(fmt.render_yaml(writable(await client.get("/1.0"), SERVER_FIELDS)))
        return 0
    name, snap = split_snapshot(args.name)
    path = Target.instance(name).path + (f"/snapshots/{quote(snap, safe='')}" if snap else "")
    obj = await client.get(path)
    if args.expanded:
        obj = dict(obj, config=obj.get("expanded_config"), devices=obj.get("expanded_devices"))
    fields = INSTANCE_FIELDS + (("expires_at",) if snap else ())
    sys.stdout.write(fmt.render_yaml(writable(obj, fields)))
    return 0


# ----------------------------------------------------------------------------- devices

async def add_device(client: Client, target: Target, device: str, kind: str,
                     settings: Sequence[str]) -> None:
    def change(obj: dict[str, Any]) -> None:
        if device in obj["devices"]:
            raise CliError("The device already exists")
        obj["devices"][device] = {"type": kind, **parse_pairs(settings)}

    await update(client, target, change)
    print(f"Device {device} added to {target.name}")


async def remove_devices(client: Client, target: Target, devices: Sequence[str]) -> None:
    def change(obj: dict[str, Any]) -> None:
        for device in devices:
            if device in obj["devices"]:
                del obj["devices"][device]
            elif device in (obj.get("expanded_devices") or {}):
                raise CliError("Device from profile(s) cannot be removed from individual "
                               "instance. Override device or modify profile instead")
            else:
                raise CliError("The device doesn't exist")

    await update(client, target, change)
    for device in devices:
        print(f"Device {device} removed from {target.name}")


async def set_device(client: Client, target: Target, device: str,
                     settings: Sequence[str]) -> None:
    """Change device keys; a device inherited from a profile is copied first (an override)."""
    def change(obj: dict[str, Any]) -> None:
        if device not in obj["devices"]:
            inherited = (obj.get("expanded_devices") or {}).get(device)
            if inherited is None:
                raise CliError("The device doesn't exist")
            obj["devices"][device] = dict(inherited)
        apply_settings(obj["devices"][device], parse_pairs(settings))

    await update(client, target, change)


async def device_add(client: Client, args: argparse.Namespace) -> int:
    await add_device(client, Target.instance(args.name), args.device, args.type, args.settings)
    return 0


async def device_remove(client: Client, args: argparse.Namespace) -> int:
    await remove_devices(client, Target.instance(args.name), args.devices)
    return 0


async def device_set(client: Client, args: argparse.Namespace) -> int:
    await set_device(client, Target.instance(args.name), args.device, args.settings)
    return 0


async def device_list(client: Client, args: argparse.Namespace) -> int:
    obj = await client.get(Target.instance(args.name).path)
    for device in sorted(obj.get("devices") or {}):
        print(device)
    return 0


async def device_show(client: Client, args: argparse.Namespace) -> int:
    obj = await client.get(Target.instance(args.name).path)
    sys.stdout.write(fmt.render_yaml(obj.get("devices") or {}))
    return 0
