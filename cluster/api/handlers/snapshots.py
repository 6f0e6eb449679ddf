"""``/1.0/instances/<name>/snapshots``: create, list, rename, delete (restore is a PUT)."""

from __future__ import annotations

from aiohttp import web

from cluster.api import queries, schemas, views
from cluster.api.bodies import json_body
from cluster.api.handlers.common import ctx_of, instance_copy, tracked_operation
from cluster.api.op_registry import rfc3339
from cluster.api.response import bad_request, not_found, sync
from cluster.state.commands import command


def _url(name: str, snap: str) -> str:
    return f"/1.0/instances/{name}/snapshots/{snap}"


async def list_snapshots(request: web.Request) -> web.Response:
    inst = instance_copy(ctx_of(request), request.match_info["name"])
    ready = [s for s in inst.snapshots.values() if s.shown]
    if queries.recursion(request):
        return sync([views.snapshot(inst, s) for s in ready])
    return sync([_url(inst.name, s.name) for s in ready])


def _next_name(existing: set[str]) -> str:
    index = 0
    while f"snap{index}" in existing:
        index += 1
    return f"snap{index}"


async def create_snapshot(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.SnapshotsPost)
    inst = instance_copy(ctx, name)
    snap = body.get("name") or _next_name(set(inst.snapshots))
    expires = body.get("expires_at")
    expires_at = 0.0
    if expires and expires != rfc3339(0):
        try:
            from datetime import datetime
            expires_at = datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise bad_request(f"Invalid expires_at {expires!r}") from exc
    cmd = command("instance.snapshot", name=name, snapshot=snap,
                  stateful=bool(body.get("stateful")), expires_at=expires_at,
                  description=str(body.get("description", "")))
    tracker = await ctx.submit_tracked(cmd)
    return tracked_operation(ctx, tracker, "Snapshotting instance",
                             {"instances": [f"/1.0/instances/{name}"],
                              "instances_snapshots": [_url(name, snap)]},
                             ("instance-snapshot-created", _url(name, snap)))


def _snapshot_or_404(request: web.Request):  # type: ignore[no-untyped-def]
    inst = instance_copy(ctx_of(request), request.match_info["name"])
    snap = inst.snapshots.get(request.match_info["snap"])
    if snap is None or not snap.shown:
        raise not_found("Snapshot not found")
    return inst, snap


async def get_snapshot(request: web.Request) -> web.Response:
    inst, snap = _snapshot_or_404(request)
    return sync(views.snapshot(inst, snap))


async def delete_snapshot(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    inst, snap = _snapshot_or_404(request)
    tracker = await ctx.submit_tracked(
        command("instance.snapshot_delete", name=inst.name, snapshot=snap.name))
    return tracked_operation(ctx, tracker, "Deleting snapshot",
                             {"instances": [f"/1.0/instances/{inst.name}"]},
                             ("instance-snapshot-deleted", _url(inst.name, snap.name)))


async def rename_snapshot(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    inst, snap = _snapshot_or_404(request)
    body = await json_body(request, schemas.SnapshotPost)
    if body.get("migration"):
        raise bad_request("Snapshot migration is not supported")
    tracker = await ctx.submit_tracked(command(
        "instance.snapshot_rename", name=inst.name, snapshot=snap.name,
        new_name=body.get("name")))
    return tracked_operation(ctx, tracker, "Renaming snapshot",
                             {"instances": [f"/1.0/instances/{inst.name}"]},
                             ("instance-snapshot-renamed", _url(inst.name, str(body.get("name")))))


ROUTES = [
    ("GET", "/1.0/instances/{name}/snapshots", list_snapshots),
    ("POST", "/1.0/instances/{name}/snapshots", create_snapshot),
    ("GET", "/1.0/instances/{name}/snapshots/{snap}", get_snapshot),
    ("DELETE", "/1.0/instances/{name}/snapshots/{snap}", delete_snapshot),
    ("POST", "/1.0/instances/{name}/snapshots/{snap}", rename_snapshot),
]
