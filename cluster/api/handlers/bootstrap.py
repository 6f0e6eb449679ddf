"""``POST /internal/init`` (``corral init --auto|--join``): make this daemon a one-member
cluster, or join one.

The CLI (``corral_cli.server.init_cluster``) posts the options to the running daemon's
unix socket; this handler creates the storage pool and the bridge
(with dnsmasq and NAT) and commits ``cluster.bootstrap``. Doing it twice is
refused with a clear error and changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import platform
from pathlib import Path

from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.cluster_join import join_cluster
from cluster.api.handlers.common import ctx_of
from cluster.api.response import ApiError, bad_request, sync
from cluster.state import validate
from cluster.state.commands import command
from cluster.transport.https import (
    ADDRESS_KEY,
    HTTPS,
    check_https_config,
    join_address,
    parse_address,
    raft_address_for,
)
from cluster.transport.https import reconcile as https_reconcile
from cluster.transport.raft_secret import raft_password

DEFAULT_BRIDGE = "corralbr0"
DEFAULT_ADDRESS = "10.190.72.1/24"


def _check_address(address: str) -> str:
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError as exc:
        raise bad_request(f"Invalid network address {address!r}: {exc}") from exc
    if iface.version != 4 or iface.network.prefixlen > 30 or iface.ip == iface.network[0]:
        raise bad_request(f"Network address {address!r} must be a host address in an IPv4 "
                          "subnet of /30 or larger, like 10.190.72.1/24")
    return str(iface)


async def init_handler(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await json_body(request, schemas.Init)
    with ctx.store.read() as state:
        if state.members:
            raise ApiError(409, "This member is already initialised")
    if body.get("join"):
        await join_cluster(request, body)
        return sync({})
    if body.get("witness"):
        raise bad_request("A witness joins an existing cluster: corral init --join TOKEN "
                          "--witness")
    driver, pool_config = _pool_choice(body)
    problem = await asyncio.to_thread(ctx.host.pool_config_problem, driver, pool_config)
    if problem:
        raise bad_request(problem)
    if body.get("member_name"):
        problem = validate.instance_name_error(body["member_name"]).replace("Instance", "Member")
        if problem:
            raise bad_request(problem)
        ctx.rename_member(str(body["member_name"]))
        await ctx.save_local()
    bridge = str(body.get("bridge_name") or DEFAULT_BRIDGE)
    if not 0 < len(bridge) <= 15 or "/" in bridge or " " in bridge:
        raise bad_request(f"Invalid bridge name {bridge!r}")
    address = _check_address(str(body.get("network_address") or DEFAULT_ADDRESS))
    config = {ADDRESS_KEY: str(body["address"])} if body.get("address") else {}
    check_https_config(config)
    member_address = await _enable_clustering(ctx, request, str(body.get("address") or ""))
    assert ctx.local is not None
    ctx.local.config.update(config)  # member-local, as in LXD
    await ctx.save_local()
    await ctx.store.submit(command(
        "cluster.bootstrap",
        member={"name": ctx.member, "address": member_address,
                "architecture": platform.machine(), "raft_address": ctx.store.address,
                "instance_types": ctx.host.instance_types,
                "capacity": await asyncio.to_thread(
                    ctx.host.capacity, _capacity_path(ctx, driver, pool_config))},
        pool={"name": "default", "driver": driver, "config": pool_config},
        network={"name": bridge, "config": {"ipv4.address": address, "ipv4.nat": "true",
                                            "ipv6.address": "none"}},
        config={}))
    await ctx.open_local_parts()
    await https_reconcile(request)
    return sync({})


def _pool_choice(body: dict[str, object]) -> tuple[str, dict[str, str]]:
    """The default pool's driver and config from ``storage_backend``, ``storage_path``
    (a dir pool's directory; a btrfs pool's block device or btrfs directory) and
    ``storage_size`` (a btrfs loop file's; checked by the host, with the rest)."""
    driver = str(body.get("storage_backend") or "dir")
    config = {"source": str(body["storage_path"])} if body.get("storage_path") else {}
    if body.get("storage_size"):
        if driver != "btrfs":
            raise bad_request(f"storage_size applies to a btrfs pool, not to {driver!r}")
        config["size"] = str(body["storage_size"])
    return driver, config


def _capacity_path(ctx: Context, driver: str, config: dict[str, str]) -> Path:
    """Where the pool's space is measured before it exists: its source, else the pools'
    directory (a loop file's size is reported once the pool is open)."""
    if driver == "dir" and config.get("source"):
        return Path(config["source"])
    return ctx.paths.storage_pools


async def _enable_clustering(ctx: Context, request: web.Request, address: str) -> str:
    """With an address the member becomes the first of a cluster others can join: Raft
    moves next to the API's port, encrypted with the cluster key. Returns HOST:PORT."""
    if not address:
        return ""
    host, port = parse_address(address)
    if host is None or host in ("0.0.0.0", "::"):
        raise bad_request("A cluster member needs a specific address, not a wildcard")
    member_address = join_address(host, port)
    raft = raft_address_for(member_address)
    key = await asyncio.to_thread(request.app[HTTPS].identity.key.read_bytes)
    await ctx.store.rebind(raft, [], raft_password(key), fresh=True)
    assert ctx.local is not None
    ctx.local.raft_address, ctx.local.partners, ctx.local.clustered = raft, [], True
    await ctx.save_local()
    return member_address


ROUTES = [("POST", "/internal/init", init_handler)]
