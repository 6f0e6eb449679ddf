"""``/1.0`` (server info and config), ``/1.0/resources`` and ``/1.0/cluster``."""

from __future__ import annotations

import asyncio
import os
import platform
from typing import Any

from aiohttp import web

import cluster
from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.response import bad_request, sync
from cluster.state.commands import Command, command
from cluster.transport.https import (
    ADDRESS_KEY,
    HTTPS,
    MEMBER_LOCAL_KEYS,
    VM_ACCELERATOR_KEY,
    check_https_config,
    is_trusted,
    listen_addresses,
)
from cluster.transport.https import reconcile as https_reconcile

# Only extensions whose behaviour corral really implements.
API_EXTENSIONS = [
    "storage", "network", "profile_usedby", "container_exec_recording",
    "container_exec_signal_handling", "file_delete", "file_append", "file_symlinks",
    "directory_manipulation", "snapshot_expiry", "etag", "patch", "resources",
    "event_lifecycle", "api_filtering", "instances", "instance_create_start",
    "image_types", "container_exec_user_group_cwd",
]


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                key, _, value = line.strip().partition("=")
                out[key] = value.strip('"')
    except OSError:
        pass
    return out


def _drivers(ctx: Context) -> dict[str, str]:
    """LXD's ``driver``/``driver_version`` ("lxc | qemu"), and how VMs are accelerated."""
    return ctx.host.driver_info()


def untrusted_info() -> dict[str, Any]:
    """What ``GET /1.0`` shows a client that is not trusted (LXD's reduced view)."""
    return {"api_extensions": API_EXTENSIONS, "api_status": "stable", "api_version": "1.0",
            "auth": "untrusted", "public": False, "auth_methods": ["tls"]}


def server_info(ctx: Context, identity: Any = None, address: str = "") -> dict[str, Any]:
    release = _os_release()
    with ctx.store.read() as state:
        config = {**state.config, **(ctx.local.config if ctx.local else {})}
        member = state.members.get(ctx.member)
        if ctx.local is not None and ctx.local.clustered and member is not None:
            config[ADDRESS_KEY] = config["cluster.https_address"] = member.address
    info: dict[str, Any] = {
        "api_extensions": API_EXTENSIONS, "api_status": "stable", "api_version": "1.0",
        "auth": "trusted", "public": False, "auth_methods": ["tls"], "config": config,
        "environment": {
            "addresses": [], "architectures": [platform.machine()], "certificate": "",
            "certificate_fingerprint": "", **_drivers(ctx), "firewall": "xtables",
            "kernel": platform.system(), "kernel_architecture": platform.machine(),
            "kernel_version": platform.release(), "os_name": release.get("NAME", ""),
            "os_version": release.get("VERSION_ID", ""), "project": "default",
            "server": "corral", "server_clustered": bool(ctx.local and ctx.local.clustered),
            "server_event_mode": "full-mesh",
            "server_name": ctx.member, "server_pid": os.getpid(),
            "server_version": cluster.__version__, "storage": "dir", "storage_version": "1",
            "storage_supported_drivers": [{"Name": "dir", "Version": "1", "Remote": False}],
        },
    }
    if identity is not None:
        info["environment"].update(certificate=identity.cert_pem,
                                   certificate_fingerprint=identity.fingerprint,
                                   addresses=listen_addresses(address))
    return info


async def get_server(request: web.Request) -> web.Response:
    if not is_trusted(request, ctx_of(request).store):
        return sync(untrusted_info())
    listener = request.app.get(HTTPS)
    identity, address = (listener.identity, listener.address) if listener else (None, "")
    return sync(server_info(ctx_of(request), identity, address))


async def put_server(request: web.Request) -> web.Response:
    """Member-local keys (``core.https_address``) stay on this member; the rest is the
    cluster's. A listener that cannot bind leaves both as they were."""
    ctx = ctx_of(request)
    body = await json_body(request, schemas.ServerPut)
    config = {key: _text(value) for key, value in (body.get("config") or {}).items()}
    with ctx.store.read() as state:
        shared_now = dict(state.config)
        member = state.members.get(ctx.member)
    local_now = dict(ctx.local.config) if ctx.local else {}
    given = config
    if request.method == "PATCH":
        config = {**shared_now, **local_now, **config}
    config.pop("cluster.https_address", None)
    check_https_config(config)
    local = {k: str(v) for k, v in config.items() if k in MEMBER_LOCAL_KEYS and v != ""}
    shared = {k: v for k, v in config.items() if k not in MEMBER_LOCAL_KEYS}
    clustered = ctx.local is not None and ctx.local.clustered
    if clustered and member is not None:
        if local.get(ADDRESS_KEY, member.address) != member.address:
            raise bad_request(f"{ADDRESS_KEY} of a cluster member is its cluster address "
                              f"({member.address}) and cannot be changed")
        local.pop(ADDRESS_KEY, None)
    try:
        mode = ctx.host.check_vm_accelerator_mode(local.get(VM_ACCELERATOR_KEY, ""))
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    await _set_local(request, ctx, local)
    try:
        await ctx.store.submit(_config_set(shared, given, patch=request.method == "PATCH"))
    except BaseException:
        await _set_local(request, ctx, local_now)
        raise
    # Only once the whole change is in: a refused cluster part leaves the mode as it was.
    await asyncio.to_thread(ctx.host.set_vm_accelerator_mode, mode)
    return sync({})


def _config_set(shared: dict[str, str], given: dict[str, str], patch: bool) -> Command:
    """The cluster's part of the change: for a PATCH only the keys given, which apply
    merges into the committed config (a merge from this replica's copy could undo a
    concurrent change of another key)."""
    if not patch:
        return command("config.set", config=shared)
    return command("config.set", config={k: v for k, v in shared.items() if k in given},
                   merge=True)


def _text(value: object) -> str:
    """A server config value as LXD stores it: booleans as "true"/"false"."""
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _set_local(request: web.Request, ctx: Context, local: dict[str, str]) -> None:
    if ctx.local is None or local == ctx.local.config:
        return
    before = dict(ctx.local.config)
    ctx.local.config = dict(local)
    try:
        await https_reconcile(request)
    except BaseException:
        ctx.local.config = before
        await https_reconcile(request)
        raise
    await ctx.save_local()


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    return out


async def resources(request: web.Request) -> web.Response:
    mem = _meminfo()
    cpus = os.cpu_count() or 1
    return sync({
        "cpu": {"architecture": platform.machine(), "total": cpus,
                "sockets": [{"socket": 0, "cores": [{"core": i, "threads": [
                    {"id": i, "thread": 0, "online": True}]} for i in range(cpus)]}]},
        "memory": {"total": mem.get("MemTotal", 0),
                   "used": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0)},
        "storage": {"disks": [], "total": 0}, "gpu": {"cards": [], "total": 0},
        "network": {"cards": [], "total": 0}, "pci": {"devices": [], "total": 0},
        "usb": {"devices": [], "total": 0},
        "system": {"type": "physical", "uuid": "", "vendor": "", "product": ""},
    })


async def get_cluster(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    clustered = ctx.local is not None and ctx.local.clustered
    return sync({"server_name": ctx.member, "enabled": clustered, "member_config": []})


ROUTES = [
    ("GET", "/1.0", get_server),
    ("PUT", "/1.0", put_server),
    ("PATCH", "/1.0", put_server),
    ("GET", "/1.0/resources", resources),
    ("GET", "/1.0/cluster", get_cluster),
]
