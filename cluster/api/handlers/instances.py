"""``/1.0/instances`` and ``/1.0/instances/<name>``."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from aiohttp import web

from cluster.api import filters, queries, schemas, views
from cluster.api.bodies import json_body
from cluster.api.handlers.common import (
    Probe,
    ctx_of,
    if_match,
    instance_copy,
    live_statuses,
    probe_instances,
    tracked_operation,
    until_replica,
)
from cluster.api.handlers.state import instance_states
from cluster.api.intent_ops import start_move
from cluster.api.plan_adapter import (
    PLAN_ATTEMPTS,
    chosen_member,
    explain_response,
    is_stale_plan,
    plan_instance,
)
from cluster.api.reads import instance_names, render_each
from cluster.api.response import ApiError, bad_request, not_found, sync
from cluster.controllers.control_metrics import unrecorded
from cluster.state import etags, validate
from cluster.state.apply_instances import expanded
from cluster.state.commands import command
from cluster.state.errors import Conflict
from cluster.state.model import State

REMOTE_STATUS_LAG = 0.5  # s: how long a delete waits for another member's stop report
ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucky",
              "merry", "proud", "quick", "sunny", "tidy", "witty")
ANIMALS = ("ant", "bee", "cat", "doe", "eel", "fox", "gnu", "hen", "ibex", "jay", "koala",
           "lynx", "mole", "newt", "owl", "pug", "yak")


async def list_instances(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    recursion = queries.recursion(request)
    clauses = filters.parse(request.query["filter"]) if request.query.get("filter") else None
    names = instance_names(ctx.store)  # rendered in short holds of the lock (api/reads.py)
    if recursion == 0 and clauses is None:
        return sync([f"/1.0/instances/{name}" for name in names])

    def probe(state: State, name: str) -> Probe | None:
        i = state.instances.get(name)
        return None if i is None else Probe(i.name, i.observed.status, i.observed.generation,
                                            i.location == ctx.member, i.type)

    probes = await render_each(ctx.store, names, probe)
    found = await probe_instances(ctx, probes, full=recursion >= 2)
    now = time.time()

    def render(state: State, probe: Probe) -> dict[str, Any] | None:
        inst = state.instances.get(probe.name)
        if inst is None:
            return None
        obj = views.instance(state, inst, found[probe.name]["status"], now)
        if recursion >= 2:
            obj["state"] = found[probe.name]
            obj["snapshots"] = [views.snapshot(inst, s) for s in inst.snapshots.values()
                                if s.shown] or None
            obj["backups"] = None
        return obj

    objs = await render_each(ctx.store, probes, render)
    if clauses is not None:
        objs = [o for o in objs if filters.matches(o, clauses)]
    if recursion == 0:
        return sync([f"/1.0/instances/{o['name']}" for o in objs])
    return sync(objs)


def _resolve_image(state: State, source: Any) -> str:
    if not isinstance(source, dict):
        raise bad_request("Missing or invalid instance source")
    kind = source.get("type", "image")
    if kind != "image":
        raise bad_request(f"Unsupported instance source type {kind!r}")
    if source.get("alias"):
        alias = state.aliases.get(source["alias"])
        if alias is None:
            raise not_found(f"Image alias {source['alias']!r} not found")
        return alias.target
    prefix = source.get("fingerprint", "")
    if not isinstance(prefix, str) or not prefix:
        raise bad_request("The image source needs an alias or a fingerprint")
    found = [fp for fp in state.images if fp.startswith(prefix)]
    if len(found) != 1:
        raise not_found("Image not found") if not found else bad_request(
            "More than one image matches the fingerprint prefix")
    return found[0]


def _mac() -> str:
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def _free_name(state: State) -> str:
    while True:
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(ANIMALS)}"
        if name not in state.instances:
            return name


async def create_instance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await json_body(request, schemas.InstancesPost)
    instance_type = body.get("type") or "container"
    if instance_type not in ("container", "virtual-machine"):
        raise bad_request(f"Instance type {body['type']!r} is not supported")
    config = body.get("config") or {}
    devices = body.get("devices") or {}
    profiles = body.get("profiles")
    profiles = ["default"] if profiles is None else profiles
    with ctx.store.read() as state:
        name = body.get("name") or _free_name(state)
        problem = (validate.instance_name_error(name) or validate.config_error(config)
                   or validate.devices_error(devices))
        if problem:
            raise bad_request(problem)
        if name in state.instances:
            raise ApiError(409, "Instance already exists")
        fingerprint = _resolve_image(state, body.get("source"))
        image = state.images[fingerprint]
        image_type = image.info.get("type", "container")
        if image_type != instance_type:
            raise bad_request(f"The image is a {image_type} image; instance type is "
                              f"{instance_type}")
        _, all_devices = expanded(state, config, devices, [p for p in profiles
                                                         if p in state.profiles])
        config = dict(config)
        for key, value in image.info.get("properties", {}).items():
            config.setdefault(f"image.{key}", str(value))
        for dev_name, dev in all_devices.items():
            if dev.get("type") == "nic" and not dev.get("hwaddr"):
                config.setdefault(f"volatile.{dev_name}.hwaddr", _mac())
    target = request.query.get("target", "")
    architecture = image.info.get("architecture", "x86_64")
    uid = uuid.uuid4().hex
    explain = request.query.get("placement") == "explain"
    for attempt in range(PLAN_ATTEMPTS):
        with ctx.store.read() as state:
            plan = plan_instance(state, request_id=uid, name=name, type_=instance_type,
                                 architecture=architecture, config=config, devices=devices,
                                 profiles=profiles, target=target,
                                 place=unrecorded if explain else ctx.control.place)
        if explain:  # a dry run: where it would go, and why; nothing is created
            return sync(explain_response(plan))
        cmd = command("instance.create", uid=uid, name=name, type=instance_type,
                      location=chosen_member(plan), target=target, architecture=architecture,
                      image=fingerprint, config=config, devices=devices, profiles=profiles,
                      ephemeral=bool(body.get("ephemeral", False)),
                      description=str(body.get("description", "")),
                      start=bool(body.get("start")))
        try:
            tracker = await ctx.submit_tracked(cmd)
            break
        except Conflict as exc:
            if not is_stale_plan(exc) or attempt + 1 == PLAN_ATTEMPTS:
                raise
    ctx.events.lifecycle("instance-created", f"/1.0/instances/{name}")
    return tracked_operation(ctx, tracker, "Creating instance",
                             {"instances": [f"/1.0/instances/{name}"]})


async def get_instance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    inst = instance_copy(ctx, request.match_info["name"])
    if request.query.get("placement") == "explain":  # where it would be placed now, and why
        with ctx.store.read() as state:
            plan = plan_instance(state, request_id=inst.uid, name=inst.name, type_=inst.type,
                                 architecture=inst.architecture, config=inst.config,
                                 devices=inst.devices, profiles=inst.profiles,
                                 target=request.query.get("target", ""))
        return sync(explain_response(plan))
    statuses = await live_statuses(ctx, [inst])
    with ctx.store.read() as state:
        obj = views.instance(state, inst, statuses[inst.name], time.time())
    etag = etags.instance(inst)
    if queries.recursion(request) >= 1:  # lxc info: state and snapshots inline
        obj["state"] = (await instance_states(ctx, [inst]))[0]
        obj["snapshots"] = [views.snapshot(inst, s) for s in inst.snapshots.values()
                            if s.shown] or None
    return sync(obj, etag=etag)


async def put_instance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.InstancePut)
    if body.get("restore"):
        snapshot = str(body["restore"])
        if snapshot.startswith(f"{name}/"):  # lxc sends "NAME/SNAP"
            snapshot = snapshot.split("/", 1)[1]
        cmd = command("instance.restore", name=name, snapshot=snapshot)
        tracker = await ctx.submit_tracked(cmd)
        return tracked_operation(ctx, tracker, "Restoring snapshot",
                                 {"instances": [f"/1.0/instances/{name}"]},
                                 ("instance-restored", f"/1.0/instances/{name}"))
    config = body.get("config", {})
    config = {k: v for k, v in config.items() if not k.startswith("volatile.")}
    cmd = command("instance.update", name=name, config=config, devices=body.get("devices", {}),
                  if_match=if_match(request), **_given(body))
    tracker = await ctx.submit_tracked(cmd)
    return tracked_operation(ctx, tracker, "Updating instance",
                             {"instances": [f"/1.0/instances/{name}"]},
                             ("instance-updated", f"/1.0/instances/{name}"))


def _given(body: dict[str, Any], keys: tuple[str, ...] = ("profiles", "description",
                                                            "ephemeral")) -> dict[str, Any]:
    """The fields the client sent: apply keeps the committed value of the others."""
    return {key: body[key] for key in keys if key in body}


async def patch_instance(request: web.Request) -> web.Response:
    """Only the fields sent go in the command; apply merges them into the committed
    record (a merge here, from this replica's copy, lost concurrent PATCHes)."""
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.InstancePut)
    cmd = command("instance.patch", name=name, if_match=if_match(request),
                  **_given(body, ("config", "devices", "profiles", "description", "ephemeral")))
    await ctx.submit_and_wait(cmd)
    ctx.events.lifecycle("instance-updated", f"/1.0/instances/{name}")
    return sync({})


async def delete_instance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    inst = instance_copy(ctx, name)
    statuses = await live_statuses(ctx, [inst])
    if statuses[name] in ("Running", "Frozen") and inst.location != ctx.member:
        # Another member's status comes from its report, which a stop that just ended
        # there may not have brought to this replica yet.
        await until_replica(lambda: instance_copy(ctx, name).observed.status
                            not in ("Running", "Frozen"), timeout=REMOTE_STATUS_LAG)
        inst = instance_copy(ctx, name)
        statuses = await live_statuses(ctx, [inst])
    if statuses[name] in ("Running", "Frozen") and inst.power != "Deleted":
        raise bad_request("Instance is running")
    tracker = await ctx.submit_tracked(command("instance.delete", name=name, force=True))
    return tracked_operation(ctx, tracker, "Deleting instance",
                             {"instances": [f"/1.0/instances/{name}"]},
                             ("instance-deleted", f"/1.0/instances/{name}"))


async def rename_instance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = request.match_info["name"]
    body = await json_body(request, schemas.InstancePost)
    if body.get("migration"):
        return await _move(request, name, body)
    new = body.get("name")
    instance_copy(ctx, name)
    tracker = await ctx.submit_tracked(command("instance.rename", name=name, new_name=new))
    return tracked_operation(ctx, tracker, "Renaming instance",
                             {"instances": [f"/1.0/instances/{name}"]},
                             ("instance-renamed", f"/1.0/instances/{new}"))


async def _move(request: web.Request, name: str, body: dict[str, Any]) -> web.Response:
    """LXD's migration shape within a cluster: ``POST ?target=MEMBER`` with
    ``{"migration": true}`` moves the instance there (a container cold: stop, copy, start;
    a running VM live); without a member name (or with ``@group``) the scheduler picks
    one, never the current one."""
    ctx = ctx_of(request)
    if body.get("name") not in (None, "", name):
        raise bad_request("Rename and move in two steps")
    inst = instance_copy(ctx, name)
    if body.get("live") and inst.type != "virtual-machine":
        raise bad_request("Live migration of containers is not supported; move it cold")
    requested = request.query.get("target", "")
    if requested and not requested.startswith("@"):
        with ctx.store.read() as state:
            if requested not in state.members:
                raise bad_request(f"Cluster member {requested!r} not found")
        target = requested
    else:
        with ctx.store.read() as state:
            plan = plan_instance(state, request_id=f"{inst.uid}-move", name=name,
                                 type_=inst.type, architecture=inst.architecture,
                                 config=inst.config, devices=inst.devices,
                                 profiles=inst.profiles, target=requested,
                                 exclude=[inst.location], purpose="move",
                                 place=ctx.control.place)
        target = chosen_member(plan)
    return await start_move(ctx, name, target, requested=requested or target)
