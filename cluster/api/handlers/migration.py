"""``/internal/instances/<name>/migration/...``: the two members' halves of a VM's live
migration, over the cluster's mutual TLS (``cluster/controllers/live_moves.py`` drives them).

As with volumes, every call is checked against the replicated state: the target half
runs only on the target of a live move of that very instance (by uid), the source half
only where the instance lives while it moves, and the source's copy is dropped only once
the instance lives elsewhere. QEMU's own streams (RAM, and the disk over NBD) go
directly between the two members' addresses, over TLS with mutual authentication: each
side presents a fresh leaf of the cluster certificate and accepts only a peer's leaf of
it (``_credentials``), so nothing but the cluster key opens them, as for this API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of, until_replica
from cluster.api.response import ApiError, empty, sync
from cluster.controllers.move_request import migration_downtime
from cluster.state.model import Instance
from corral_shared import tls
from node_agent.facade import InstanceSpec, MigrationCredentials, NodeFacade

PROGRESS_EVERY = 0.5  # seconds between progress lines to the orchestrator


def _moving(ctx: Context, request: web.Request) -> tuple[Instance, InstanceSpec, str]:
    """The instance (a copy), its spec, and this member's address host."""
    name, uid = request.match_info["name"], request.query.get("uid", "")
    with ctx.store.read() as state:
        inst = state.instances.get(name)
        if inst is None or inst.uid != uid:
            raise ApiError(404, "Instance not found")
        if inst.type != "virtual-machine":
            raise ApiError(400, "Only virtual machines migrate live")
        me = state.members.get(ctx.member)
        address = me.address if me is not None else ""
        return dataclasses.replace(inst), ctx.host.spec_of(state, inst), _host(address)


def _host(address: str) -> str:
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or "]" in address \
        else address
    return host.strip("[]") or "127.0.0.1"


def _credentials(root: Path) -> MigrationCredentials:
    """This member's TLS identity for QEMU's migration streams, from what it holds locally:
    members share the cluster certificate (``membership``), so the peer's certificate is
    this one and nothing needs to travel. QEMU refuses to present a CA certificate (the
    cluster's is one), so it gets a one-day leaf the cluster key signs, naming
    ``TLS_HOSTNAME``; it trusts the cluster certificate, i.e. only a member's leaf."""
    ca_pem, ca_key = (root / "server.crt").read_bytes(), (root / "server.key").read_bytes()
    cert_pem, key_pem = tls.issue(ca_pem, ca_key, "corral migration",
                                  [NodeFacade.MIGRATION_HOSTNAME])
    return ca_pem, cert_pem, key_pem


async def prepare(request: web.Request) -> web.Response:
    """POST .../incoming (target): a paused QEMU waiting for the migration, its disk
    exported over NBD; answers where the source is to send."""
    ctx = ctx_of(request)
    await until_replica(lambda: _moving(ctx, request)[0].moving_to == ctx.member)
    inst, spec, host = _moving(ctx, request)
    if inst.moving_to != ctx.member:
        raise ApiError(409, "This instance is not being moved to this member")
    root = ctx.paths.root
    incoming = await ctx.host.prepare_incoming(spec, host, lambda: _credentials(root))
    return sync({"incoming": incoming})


async def _on_vm(request: web.Request, lives_here: bool,
                 work: Callable[[NodeFacade, str], None]) -> web.Response:
    """Run ``work(host, name)`` in a thread, only where the instance lives
    (``lives_here``) or only where it does not."""
    ctx = ctx_of(request)
    await until_replica(lambda: (_moving(ctx, request)[0].location == ctx.member) == lives_here)
    inst, _, _ = _moving(ctx, request)
    if lives_here and inst.location != ctx.member:
        raise ApiError(409, "The instance does not live on this member")
    if not lives_here and inst.location == ctx.member:
        raise ApiError(409, "The instance lives on this member; it stays")
    await asyncio.to_thread(work, ctx.host, inst.name)
    return empty()


async def finish_incoming(request: web.Request) -> web.Response:
    """POST .../incoming/finish (target, after the move is committed): run the guest."""
    return await _on_vm(request, True, NodeFacade.finish_incoming)


async def abort_incoming(request: web.Request) -> web.Response:
    """DELETE .../incoming (target, a failed migration): drop the waiting QEMU."""
    return await _on_vm(request, False, NodeFacade.abort_incoming)


async def send(request: web.Request) -> web.StreamResponse:
    """POST .../outgoing (source) with ``{"incoming": ..., "downtime_ms": n}``: mirror the
    disk and migrate RAM to the prepared target. Answers progress lines (JSON), then
    ``{"done": stats}`` or ``{"error": ...}``; on an error the VM runs here again."""
    ctx = ctx_of(request)
    await until_replica(lambda: bool(_moving(ctx, request)[0].moving_to))
    inst, _, _ = _moving(ctx, request)
    if inst.location != ctx.member or not inst.moving_to:
        raise ApiError(409, "This instance is not being moved away from this member")
    body = await json_body(request, schemas.MigrationSend)
    incoming = body.get("incoming") or {}
    ctx.host.check_incoming(incoming)  # DriverError 400 if it is not a prepared target's
    try:
        downtime = int(body.get("downtime_ms", migration_downtime(inst.config)))
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from exc
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    last = [0.0]

    def progress(report: dict[str, Any]) -> None:  # in the worker thread
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            loop.call_soon_threadsafe(reports.put_nowait, dict(report))

    host, root = ctx.host, ctx.paths.root
    work = asyncio.ensure_future(asyncio.to_thread(
        host.migrate_out, inst.name, incoming, lambda: _credentials(root), downtime,
        progress))
    while not work.done():
        waiter = asyncio.ensure_future(reports.get())
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            await response.write(json.dumps({"progress": waiter.result()}).encode() + b"\n")
        else:
            waiter.cancel()
    try:
        line: dict[str, Any] = {"done": work.result()}
    except Exception as exc:  # noqa: BLE001 - the orchestrator reads the error line
        line = {"error": str(exc) or type(exc).__name__}  # migrate_out resumed the VM
    await response.write(json.dumps(line).encode() + b"\n")
    await response.write_eof()
    return response


async def resume(request: web.Request) -> web.Response:
    """POST .../outgoing/resume (source): the move was not committed; run the guest here
    again (it paused when its RAM had gone)."""
    return await _on_vm(request, True, NodeFacade.resume_source)


async def drop_source(request: web.Request) -> web.Response:
    """DELETE .../outgoing (source, once the instance lives on the target): quit the
    paused QEMU and delete the VM's files here."""
    return await _on_vm(request, False, NodeFacade.drop_source)


ROUTES = [
    ("POST", "/internal/instances/{name}/migration/incoming", prepare),
    ("POST", "/internal/instances/{name}/migration/incoming/finish", finish_incoming),
    ("DELETE", "/internal/instances/{name}/migration/incoming", abort_incoming),
    ("POST", "/internal/instances/{name}/migration/outgoing", send),
    ("POST", "/internal/instances/{name}/migration/outgoing/resume", resume),
    ("DELETE", "/internal/instances/{name}/migration/outgoing", drop_source),
]
