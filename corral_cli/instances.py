"""Instance lifecycle verbs: launch, init, start, stop, restart, pause, delete, rename,
snapshot and restore, with ``lxc``'s requests, messages and batch behaviour."""

from __future__ import annotations

import argparse
import asyncio
import string
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

from corral_cli.client import ApiError, Client, CliError, UsageError
from corral_cli.progress import Progress

STOPPED_CODES = (102, 112)  # Stopped, Error: what lxc's IsActive() treats as not running
FROZEN = 110


def path_of(name: str) -> str:
    return f"/1.0/instances/{quote(name, safe='')}"


def is_active(inst: dict[str, Any]) -> bool:
    """Running, frozen or busy: anything but stopped or broken (lxc's ``IsActive``)."""
    code = inst.get("status_code")
    if code:
        return code not in STOPPED_CODES
    return str(inst.get("status", "")).lower() not in ("stopped", "error", "")


def split_snapshot(spec: str) -> tuple[str, str | None]:
    """``c1/snap0`` -> ``("c1", "snap0")``; ``c1`` -> ``("c1", None)``."""
    name, sep, snap = spec.partition("/")
    return name, (snap if sep else None)


def parse_pairs(items: Sequence[str], what: str = "config") -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a missing ``=`` is a usage error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"Bad key=value pair: {item}" if what == "config"
                             else f"Bad {what}: {item}")
        out[key] = value
    return out


def _looks_like_fingerprint(image: str) -> bool:
    return len(image) >= 6 and all(c in string.hexdigits for c in image)


async def _devices_from_flags(client: Client, args: argparse.Namespace,
                              profiles: list[str] | None) -> dict[str, dict[str, str]]:
    """Devices for ``-s POOL`` and ``-d DEV,KEY=VALUE`` (copied from the profiles, then changed)."""
    devices: dict[str, dict[str, str]] = {}
    if args.device:
        expanded: dict[str, dict[str, str]] = {}
        for profile in profiles if profiles is not None else ["default"]:
            data = await client.get(f"/1.0/profiles/{quote(profile, safe='')}")
            expanded.update(data.get("devices") or {})
        for spec in args.device:
            dev, _, rest = spec.partition(",")
            if dev not in expanded and dev not in devices:
                raise CliError(f"Cannot override config for device \"{dev}\": "
                               "Device not found in profile devices")
            device = devices.setdefault(dev, dict(expanded.get(dev, {})))
            device.update(parse_pairs(rest.split(",") if rest else [], "device override"))
    if args.storage:
        devices.setdefault("root", {"type": "disk", "path": "/"})["pool"] = args.storage
    return devices


async def create(client: Client, args: argparse.Namespace) -> str:
    """POST /1.0/instances from an image; returns the instance name (the server may pick it)."""
    if not args.image:
        raise UsageError("an image is required")
    profiles: list[str] | None = [] if args.no_profiles else args.profile
    image = args.image.removeprefix("local:")
    body: dict[str, Any] = {
        "source": {"type": "image", "alias": image},
        "type": "virtual-machine" if args.vm else args.type,
        "config": parse_pairs(args.config),
        "devices": await _devices_from_flags(client, args, profiles),
        "ephemeral": args.ephemeral,
        "description": args.description,
    }
    if args.name:
        body["name"] = args.name
    if profiles is not None:
        body["profiles"] = profiles
    path = "/1.0/instances" + (f"?target={quote(args.target)}" if args.target else "")
    if getattr(args, "dry_run", False):
        sep = "&" if args.target else "?"
        plan = await client.request("POST", f"{path}{sep}placement=explain", body=body)
        print("\n".join((plan.metadata or {}).get("text") or []))
        raise DryRun()
    print(f"Creating {args.name}" if args.name else "Creating the instance", flush=True)
    progress = Progress("Retrieving image: {}", quiet=args.quiet)
    try:
        op = await _create(client, path, body, image, progress)
    finally:
        progress.done()
    name = args.name or _created_name(op)
    if not args.name:
        print(f"Instance name is: {name}")
    return name


async def _create(client: Client, path: str, body: dict[str, Any], image: str,
                  progress: Progress) -> Any:
    try:
        return await client.call("POST", path, body, progress=progress)
    except ApiError as exc:
        # lxc resolves the alias first; retrying as a fingerprint only costs on a miss.
        if exc.status_code != 404 or not _looks_like_fingerprint(image):
            raise
    body["source"] = {"type": "image", "fingerprint": image}
    return await client.call("POST", path, body, progress=progress)


def _created_name(op: Any) -> str:
    resources = (op or {}).get("resources") or {}
    for url in resources.get("instances") or resources.get("containers") or []:
        return str(url).rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    raise CliError("The server did not say which instance it created")


class DryRun(Exception):
    """``--dry-run``: the placement was shown; nothing was created."""


async def launch(client: Client, args: argparse.Namespace) -> int:
    """``corral launch IMAGE [NAME]``: create, then start."""
    try:
        name = await create(client, args)
    except DryRun:
        return 0
    print(f"Starting {name}", flush=True)
    await change_state(client, name, "start")
    return 0


async def init(client: Client, args: argparse.Namespace) -> int:
    """``corral init IMAGE [NAME]``: create without starting."""
    try:
        await create(client, args)
    except DryRun:
        pass
    return 0


async def change_state(client: Client, name: str, action: str, *, force: bool = False,
                       timeout: int = -1, stateful: bool = False) -> None:
    """PUT /1.0/instances/NAME/state and wait for the operation."""
    body = {"action": action, "timeout": timeout, "force": force, "stateful": stateful}
    await client.call("PUT", path_of(name) + "/state", body)


async def batch(names: Sequence[str], action: Callable[[str], Awaitable[None]],
                verb: str) -> int:
    """Run ``action`` on every name at once; report failures like ``lxc``'s ``runBatch``."""
    results = await asyncio.gather(*(action(n) for n in names), return_exceptions=True)
    failures = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
    for _, failure in failures:
        if not isinstance(failure, CliError):
            raise failure
    if not failures:
        return 0
    if len(names) == 1:
        raise failures[0][1]
    for name, failure in failures:
        print(f"{name}: error: {failure}", file=sys.stderr)
    print(file=sys.stderr)
    raise CliError(f"Some instances failed to {verb}")


async def start(client: Client, args: argparse.Namespace) -> int:
    async def one(name: str) -> None:
        current = await client.get(path_of(name))
        # "start" on a frozen instance means "unfreeze", as in lxc; a saved state is
        # restored unless --stateless.
        action = "unfreeze" if current.get("status_code") == FROZEN else "start"
        if args.stateless and not current.get("stateful"):
            raise CliError("--stateless can only be passed when the instance is stateful")
        stateful = action == "start" and bool(current.get("stateful")) and not args.stateless
        await change_state(client, name, action, stateful=stateful)

    return await batch(args.names, one, "start")


async def stop(client: Client, args: argparse.Namespace) -> int:
    return await batch(args.names, lambda n: change_state(
        client, n, "stop", force=args.force, timeout=args.timeout,
        stateful=args.stateful), "stop")


async def restart(client: Client, args: argparse.Namespace) -> int:
    return await batch(args.names, lambda n: change_state(
        client, n, "restart", force=args.force, timeout=args.timeout), "restart")


async def pause(client: Client, args: argparse.Namespace) -> int:
    return await batch(args.names, lambda n: change_state(client, n, "freeze"), "pause")


async def delete(client: Client, args: argparse.Namespace) -> int:
    """Delete instances (stopping them first with ``--force``) and ``NAME/SNAP`` snapshots."""
    for spec in args.names:
        name, snap = split_snapshot(spec)
        if snap is not None:
            await client.call("DELETE", f"{path_of(name)}/snapshots/{quote(snap, safe='')}")
            continue
        inst = await client.get(path_of(name))
        if is_active(inst):
            if not args.force:
                raise CliError("The instance is currently running, stop it first or pass --force")
            try:
                await change_state(client, name, "stop", force=True)
            except ApiError as exc:
                raise CliError(f"Stopping the instance failed: {exc}") from exc
            if inst.get("ephemeral"):
                continue  # the server deletes ephemeral instances when they stop
        await client.call("DELETE", path_of(name))
    return 0


async def rename(client: Client, args: argparse.Namespace) -> int:
    """POST {name} on the instance, or on the snapshot when both names are ``NAME/SNAP``;
    with ``--target``, LXD's migration POST: move the instance to another member."""
    if args.target or not args.new:
        return await move(client, args)
    old_name, old_snap = split_snapshot(args.old)
    new_name, new_snap = split_snapshot(args.new)
    if old_snap is not None:
        if new_snap is None or new_name != old_name:
            raise UsageError("Snapshots can only be renamed within their instance (NAME/NEWSNAP)")
        await client.call("POST", f"{path_of(old_name)}/snapshots/{quote(old_snap, safe='')}",
                          {"name": new_snap})
        return 0
    await client.call("POST", path_of(old_name), {"name": new_name})
    return 0


async def move(client: Client, args: argparse.Namespace) -> int:
    if args.new and args.new != args.old:
        raise UsageError("Rename and move in two steps")
    name = split_snapshot(args.old)[0]
    path = path_of(name) + (f"?target={quote(args.target)}" if args.target else "")
    progress = Progress("Transferring instance: {}", quiet=args.quiet)
    try:
        await client.call("POST", path, {"name": name, "migration": True, "live": False},
                          progress=progress)
    finally:
        progress.done()
    return 0


async def snapshot(client: Client, args: argparse.Namespace) -> int:
    """POST /1.0/instances/NAME/snapshots; an empty name lets the server pick ``snapN``."""
    if "/" in args.snapshot:
        raise UsageError("Snapshot names may not contain slashes")
    if args.reuse and args.snapshot:
        try:
            await client.call("DELETE",
                              f"{path_of(args.name)}/snapshots/{quote(args.snapshot, safe='')}")
        except ApiError as exc:
            if exc.status_code != 404:
                raise
    body = {"name": args.snapshot, "stateful": args.stateful}
    await client.call("POST", path_of(args.name) + "/snapshots", body)
    return 0


async def restore(client: Client, args: argparse.Namespace) -> int:
    """PUT /1.0/instances/NAME {restore: NAME/SNAP}, exactly the body ``lxc restore`` sends."""
    snap = args.snapshot if "/" in args.snapshot else f"{args.name}/{args.snapshot}"
    await client.call("PUT", path_of(args.name), {"restore": snap, "stateful": args.stateful})
    return 0
