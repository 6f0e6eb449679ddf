"""Joining members to the cluster (see cluster/membership/joining.py for the protocol)."""

from __future__ import annotations

import asyncio
import logging
import platform
from typing import Any

import aiohttp
from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.response import ApiError, bad_request, empty, sync
from cluster.controllers.voters import add_voter
from cluster.membership.joining import (
    JoinToken,
    accept_reply,
    check_accept_body,
    new_secret,
    secret_hash,
    token_expiry,
)
from cluster.membership.raft_role import background
from cluster.state.apply_members import VOTER
from cluster.state.clock import wall_time
from cluster.state.commands import command
from cluster.transport.https import HTTPS, METRICS_LISTENER, Identity, raft_address_for
from cluster.transport.raft_secret import raft_password

log = logging.getLogger(__name__)
JOIN_TIMEOUT = 60.0


def _identity(request: web.Request) -> Identity:
    listener = request.app.get(HTTPS)
    if listener is None:
        raise ApiError(503, "HTTPS is not available")
    return listener.identity


def _require_clustered(ctx: Context) -> None:
    with ctx.store.read() as state:
        member = state.members.get(ctx.member)
        clustered = ctx.local is not None and ctx.local.clustered
        if member is None or not member.address or not clustered:
            raise bad_request("This member is not clustered: initialise it with "
                              "`corral init --auto --address ADDR` first")


async def create_join_token(request: web.Request) -> web.Response:
    """POST /1.0/cluster/members {server_name}: a single-use join token (LXD's shape)."""
    ctx = ctx_of(request)
    body = await json_body(request, schemas.ClusterMembersPost)
    _require_clustered(ctx)
    name = str(body.get("server_name", ""))
    secret = new_secret()
    with ctx.store.read() as state:
        expires_at = token_expiry(state.config, wall_time())
        addresses = [m.address for m in state.members.values() if m.address]
    await ctx.store.submit(command("join_token.add", name=name, secret_hash=secret_hash(secret),
                                   expires_at=expires_at))
    token = JoinToken(name, _identity(request).fingerprint, addresses, secret, expires_at)
    return sync({"server_name": name, "token": token.encode(), "addresses": addresses,
                 "fingerprint": token.fingerprint, "expires_at": expires_at})


async def accept_member(request: web.Request) -> web.Response:
    """POST /internal/cluster/accept: a joiner presents its token's secret (untrusted)."""
    ctx = ctx_of(request)
    _require_clustered(ctx)
    body = await json_body(request, schemas.MemberAccept)
    name, secret, address, architecture = check_accept_body(body)
    raft = raft_address_for(address)
    capacity = body.get("capacity") if isinstance(body.get("capacity"), dict) else {}
    joined = await ctx.store.submit(command(
        "member.join", name=name, secret_hash=secret_hash(secret), address=address,
        raft_address=raft, architecture=architecture, capacity=capacity,
        instance_types=body.get("instance_types"), witness=body.get("witness") is True))
    voter = VOTER in joined["roles"]
    if voter:
        # The change may need the new member's vote to commit (two voters), and that
        # member starts Raft only after this reply: add it in the background.
        background(add_voter(ctx.store, raft))  # at once: the controller would within a round
    identity = _identity(request)
    with ctx.store.read() as state:
        members = [{"name": m.name, "address": m.address, "raft_address": m.raft_address,
                    "voter": VOTER in m.roles} for m in state.members.values()]
    log.info("member %s joined from %s (raft %s)", name, address, raft)
    crt, key = await asyncio.to_thread(lambda: (identity.crt.read_text(), identity.key.read_text()))
    reply = accept_reply(crt, key, members)
    return sync({**reply, "voter": voter})


async def remove_member(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    force = request.query.get("force") in ("1", "true")
    with ctx.store.read() as state:
        member = state.members.get(name)
        raft = member.raft_address if member is not None else ""
    await ctx.store.submit(command("member.remove", name=name, force=force))
    if raft and raft != ctx.store.address:
        try:
            await ctx.store.remove_member(raft)
        except Exception as exc:  # noqa: BLE001 - the record is gone; Raft may lag
            log.warning("removing %s from Raft: %s", raft, exc)
    return empty()


async def join_cluster(request: web.Request, body: dict[str, Any]) -> None:
    """``corral init --join TOKEN --address ADDR [--witness]`` on this (uninitialised)
    member. A witness votes and holds nothing: ``open_local_parts`` makes no pool or
    bridge on it, and the scheduler places nothing on it."""
    ctx = ctx_of(request)
    token = JoinToken.decode(str(body["join"]))
    address = str(body.get("address") or "")
    if not address:
        raise bad_request("Joining needs --address HOST:PORT for this member")
    if token.expires_at < wall_time():
        raise ApiError(403, "The join token has expired")
    capacity = await asyncio.to_thread(ctx.host.capacity)
    reply = await _ask_to_join(token, address, capacity, ctx.host.instance_types,
                               witness=body.get("witness") is True)
    identity = await asyncio.to_thread(_adopt_certificate, ctx, reply)
    raft = raft_address_for(address)
    partners = [m["raft_address"] for m in reply["members"]
                if m["name"] != token.server_name and m.get("voter", True)]
    voter = bool(reply.get("voter", True))
    ctx.rename_member(token.server_name)
    assert ctx.local is not None
    ctx.local.raft_address, ctx.local.partners, ctx.local.clustered = raft, partners, True
    ctx.local.voter = voter
    await ctx.save_local()
    key_bytes = await asyncio.to_thread(identity.key.read_bytes)
    await ctx.store.rebind(raft, partners, raft_password(key_bytes), fresh=True,
                           voter=voter)
    await _wait_for_own_record(ctx)
    await ctx.open_local_parts()
    await request.app[HTTPS].set_identity(identity)
    metrics_listener = request.app.get(METRICS_LISTENER)
    if metrics_listener is not None:
        await metrics_listener.set_identity(identity)


async def _ask_to_join(token: JoinToken, address: str,
                       capacity: dict[str, float],
                       instance_types: list[str], witness: bool) -> dict[str, Any]:
    body = {"server_name": token.server_name, "secret": token.secret, "address": address,
            "architecture": platform.machine(), "capacity": capacity,
            "instance_types": instance_types, "witness": witness}
    pin = aiohttp.Fingerprint(bytes.fromhex(token.fingerprint))
    errors = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JOIN_TIMEOUT)) as http:
        for target in token.addresses:
            try:
                async with http.post(f"https://{target}/internal/cluster/accept", json=body,
                                     ssl=pin) as resp:
                    doc = await resp.json()
                    if resp.status >= 400:
                        raise ApiError(resp.status, str(doc.get("error")))
                    return dict(doc["metadata"])
            except ApiError:
                raise
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                errors.append(f"{target}: {exc}")
    raise ApiError(503, "No cluster member could be reached: " + "; ".join(errors))


def _adopt_certificate(ctx: Context, reply: dict[str, Any]) -> Identity:
    """Members share the cluster certificate; replace this member's own with it."""
    root = ctx.paths.root
    (root / "server.crt").write_text(reply["cluster_certificate"])
    key = root / "server.key"
    key.write_text(reply["cluster_key"])
    key.chmod(0o600)
    return Identity.load(root)


async def _wait_for_own_record(ctx: Context) -> None:
    deadline = asyncio.get_running_loop().time() + JOIN_TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        with ctx.store.read() as state:
            if ctx.member in state.members and state.storage_pools:
                return
        await asyncio.sleep(0.05)
    raise ApiError(504, "Joined, but the cluster's state did not arrive in time")


ROUTES_TRUSTED = [
    ("POST", "/1.0/cluster/members", create_join_token),
    ("DELETE", "/1.0/cluster/members/{name}", remove_member),
]
ROUTES_UNTRUSTED = [("POST", "/internal/cluster/accept", accept_member)]
