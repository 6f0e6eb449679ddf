"""Apply handlers for instances and their snapshots.

Each handler validates first and mutates only when everything checks out, so
a refused command changes nothing. Every change the node agent must carry out bumps the
instance's ``generation``. Changes are desired state that the agent converges on: power
(``power``, ``boots``, ``power_args``; node_agent/converge.py), and existence, name and spec
(``observed.created``, ``observed.name``, ``spec_gen``, ``power == "Deleted"``;
node_agent/desired.py), and the snapshot set and restores (``Snapshot.ready``,
``deleted``, ``local``; ``restore_gen``; node_agent/desired_snapshots.py, settled by
``apply_snapshots``). Nothing is queued. The agent reports the generation it reached with
``instance.observed``.
"""

from __future__ import annotations

import copy
from typing import Any

from cluster.state import etags, ha, reservations, validate
from cluster.state.apply_intents import lock_problem
from cluster.state.apply_snapshots import settle_snapshots, snapshot_name_taken
from cluster.state.commands import Command, Result, fail, ok
from cluster.state.model import Action, Instance, Snapshot, State
from cluster.state.placement import placement_problem, resize_problem
from cluster.state.shared import shared, shared_config

POWER_AFTER = {"start": "Running", "restart": "Running", "stop": "Stopped",
               "freeze": "Frozen", "unfreeze": "Running"}
KEEP_RESULTS = 32
MAX_CREATE_MANY = 4096


def _want_power(inst: Instance, kind: str, args: dict[str, Any]) -> int:
    """Make ``kind`` (start, stop, restart, freeze, unfreeze) the desired power state: no
    queued action, a new generation for the agent to converge on and report."""
    inst.generation += 1
    inst.power = POWER_AFTER[kind]
    if kind == "restart":
        inst.boots = max(inst.boots, inst.observed.boots) + 1
    how = {k: v for k, v in args.items() if v not in (False, -1, -1.0, None)}
    inst.power_args = how or None
    return inst.generation


def _get(state: State, cmd: Command) -> Instance | Result:
    """The instance ``cmd`` names, to change; refused while an intent holds it or a move
    copies it elsewhere, unless the command is that intent's own (``cmd.args["intent"]``,
    whose epoch and phase ``apply_intents.fence`` has checked)."""
    name = cmd.args.get("name")
    inst = state.instances.get(name) if isinstance(name, str) else None
    if inst is None:
        return fail(404, "Instance not found")
    problem = lock_problem(inst, cmd.args)
    if problem:
        return fail(409, problem)
    if inst.power == "Deleted":  # nothing may bring it back while the agent deletes it
        return fail(409, "The instance is being deleted")
    return inst


Expanded = tuple[dict[str, str], dict[str, dict[str, str]]]


def _spec_error(state: State, args: dict[str, Any]) -> str | Expanded:
    """Why the requested config, devices and profiles are refused, or else the config
    and devices they expand to."""
    profiles = args.get("profiles", [])
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        return "Profiles must be a list of names"
    for name in profiles:
        if name not in state.profiles:
            return f"Profile {name!r} not found"
    problem = validate.config_error(args.get("config", {})) or validate.devices_error(
        args.get("devices", {}))
    if problem:
        return problem
    config, devices = expanded(state, args.get("config", {}), args.get("devices", {}), profiles)
    if not any(d.get("type") == "disk" and d.get("path") == "/" for d in devices.values()):
        return "No root device could be found"
    for dev in devices.values():
        if dev.get("type") == "disk" and dev.get("pool") and dev["pool"] not in state.storage_pools:
            return f"Storage pool {dev['pool']!r} not found"
        net = dev.get("network") or dev.get("parent")
        if dev.get("type") == "nic" and dev.get("network") and net not in state.networks:
            return f"Network {net!r} not found"
    return config, devices


def _devices_copy(devices: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Validated devices are a dict of string dicts: one level of copying is all."""
    return {name: dict(device) for name, device in devices.items()}


def expanded(state: State, config: dict[str, str], devices: dict[str, dict[str, str]],
             profiles: list[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The instance's config and devices with its profiles applied (LXD's expansion)."""
    chosen = [{"config": state.profiles[p].config, "devices": state.profiles[p].devices}
              for p in profiles if p in state.profiles]
    return validate.expand(chosen, config, devices)


def create(state: State, cmd: Command) -> Result:
    return _create(state, cmd.args, cmd.time)


def create_many(state: State, cmd: Command) -> Result:
    """A plan of many placements in one command (Nomad commits a plan of many
    allocations as one Raft entry). Every item's shape is checked before anything
    changes: one malformed item refuses the whole command. Then each item is an
    ``instance.create`` applied on its own, in order, and the result lists each item's
    Result. Items refused (a placement that no longer fits) change nothing; the others
    are created, as Nomad's plan applier commits the part of a plan that still fits.
    Should an item fail unexpectedly, the items before it are undone, so the command
    is refused whole rather than half applied."""
    items = cmd.args.get("items")
    if not isinstance(items, list) or not items:
        return fail(400, "items must be a non-empty list of instance.create arguments")
    if len(items) > MAX_CREATE_MANY:
        return fail(400, f"At most {MAX_CREATE_MANY} instances per instance.create_many")
    for number, item in enumerate(items):
        problem = _item_error(item)
        if problem:
            return fail(400, f"Item {number}: {problem}")
    return ok(_create_all(state, items, cmd.time))


def _item_error(a: object) -> str:
    """Why ``a`` is not shaped like ``instance.create``'s arguments, or ``""``: the checks
    that let ``_create`` run to its end without an exception."""
    if not isinstance(a, dict):
        return "Each item must be a mapping"
    if not isinstance(a.get("uid"), str) or not a["uid"]:
        return "An instance needs a uid"
    for key in ("name", "image", "location", "type", "architecture", "target"):
        if key in a and not isinstance(a[key], str):
            return f"{key} must be a string"
    return ""


def _create_all(state: State, items: list[dict[str, Any]], now: float) -> list[Result]:
    """Each item created in order; if one raises, those created before it are removed
    again (and the exception goes on to ``apply``, which refuses the command)."""
    done: list[tuple[Instance, float]] = []  # what each created item changed
    results = []
    try:
        for a in items:
            image = state.images.get(a.get("image", ""))
            image_used = image.last_used_at if image is not None else 0.0
            result = _create(state, a, now)
            if result.ok:
                done.append((state.instances[a["name"]], image_used))
            results.append(result)
    except Exception:
        for inst, image_used in reversed(done):
            _remove(state, inst)
            state.images[inst.image].last_used_at = image_used
        raise
    return results


def _create(state: State, a: dict[str, Any], now: float) -> Result:
    problem = _item_error(a) or validate.instance_name_error(a.get("name"))
    if problem:
        return fail(400, problem)
    if a["name"] in state.instances:
        return fail(409, "Instance already exists")
    kind = a.get("type", "container")
    if kind not in ("container", "virtual-machine"):
        return fail(400, f"Instance type {a.get('type')!r} is not supported")
    if a.get("image") not in state.images:
        return fail(404, "Image not found")
    image_type = state.images[a["image"]].info.get("type", "container")
    if image_type != kind:
        return fail(400, f"The image is a {image_type} image; instance type is {kind}")
    if a.get("location") not in state.members:
        return fail(400, f"Cluster member {a.get('location')!r} not found")
    spec = _spec_error(state, a)
    if isinstance(spec, str):
        return fail(400, spec)
    config, devices = spec
    problem = ha.ha_problem(state, kind, a["location"], config, devices)
    if problem:
        return fail(400, problem)
    inst = Instance(
        uid=a["uid"], name=a["name"], type=shared(str(kind)), location=shared(a["location"]),
        architecture=shared(a.get("architecture", "x86_64")), image=shared(a["image"]),
        created_at=now, config=shared_config(a.get("config", {})),
        devices=_devices_copy(a.get("devices", {})),
        profiles=[shared(p) for p in a.get("profiles", [])],
        ephemeral=bool(a.get("ephemeral", False)),
        description=str(a.get("description", "")),
    )
    inst.demand = reservations.expanded_demand(inst.type, config, devices)
    problem = placement_problem(
        state, member=inst.location, name=inst.name, type_=inst.type,
        architecture=inst.architecture, demand=inst.demand, target=str(a.get("target", "")),
        placement_group=config.get("placement.group", ""))
    if problem:
        return fail(409, f"Placement on {inst.location} no longer fits: {problem}")
    inst.generation = 1
    inst.observed.created = False  # the agent creates it (node_agent/desired.py)
    if a.get("start"):
        _want_power(inst, "start", {})
    state.instances[inst.name] = inst
    reservations.add(state, inst, (inst.demand, config.get("placement.group", "")))
    state.images[inst.image].last_used_at = now
    return ok({"uid": inst.uid, "generation": inst.generation})


def action(state: State, cmd: Command) -> Result:
    inst = _get(state, cmd)
    if isinstance(inst, Result):
        return inst
    kind = cmd.args.get("action")
    if kind not in POWER_AFTER:
        return fail(400, f"Unknown state action {kind!r}")
    stateful = bool(cmd.args.get("stateful"))
    problem = _stateful_problem(state, inst, kind) if stateful else ""
    if problem:
        return fail(400, problem)
    generation = _want_power(inst, kind, {
        "stateful": stateful, "force": bool(cmd.args.get("force", False)),
        "timeout": float(cmd.args.get("timeout", -1) or -1)})
    if kind in ("start", "restart"):
        inst.last_used_at = cmd.time
    return ok({"generation": generation})


def _stateful_problem(state: State, inst: Instance, kind: str) -> str:
    """Why a stateful stop (dump with CRIU) or start (restore the dump) is refused.
    A start that is not stateful discards a saved checkpoint, as in LXD."""
    if inst.type != "container":
        return "Stateful stop and start are supported for containers only"
    if kind == "stop":
        config, _ = expanded(state, inst.config, inst.devices, inst.profiles)
        return "" if validate.is_true(config.get("migration.stateful", "")) else (
            "Stateful stop needs migration.stateful=true (set before the container starts)")
    if kind == "start":
        return "" if inst.stateful else "The instance has no saved state to restore"
    return f"A {kind} cannot be stateful"


def update(state: State, cmd: Command) -> Result:
    """Full replacement of config and devices (PUT); profiles, description and ephemeral
    are kept when absent. With ``if_match`` (the client's ``If-Match``), only while the
    committed record still has that ETag: 412 and no change otherwise."""
    inst = _get(state, cmd)
    if isinstance(inst, Result):
        return inst
    problem = etags.mismatch(cmd.args.get("if_match"), etags.instance(inst))
    if problem:
        return fail(412, problem)
    return _replace(state, inst, cmd.args)


def patch(state: State, cmd: Command) -> Result:
    """PATCH: the given config keys and devices merged into the committed record (a
    device is replaced whole, by name), the other given fields replaced; ``if_match`` as
    in ``update``. Merging here, not in the API handler, is what keeps two concurrent
    PATCHes of different keys from losing one of them."""
    inst = _get(state, cmd)
    if isinstance(inst, Result):
        return inst
    a = cmd.args
    problem = etags.mismatch(a.get("if_match"), etags.instance(inst))
    if problem:
        return fail(412, problem)
    config, devices = a.get("config", {}), a.get("devices", {})
    problem = validate.config_error(config) or validate.devices_error(devices)
    if problem:
        return fail(400, problem)
    merged: dict[str, Any] = {k: a[k] for k in ("profiles", "description", "ephemeral") if k in a}
    merged["config"] = {**_settable(inst.config), **config}
    merged["devices"] = {**inst.devices, **devices}
    return _replace(state, inst, merged)


def _settable(config: dict[str, str]) -> dict[str, str]:
    """The config without the ``volatile.`` keys that corral itself keeps."""
    return {k: v for k, v in config.items() if not k.startswith("volatile.")}


def _replace(state: State, inst: Instance, a: dict[str, Any]) -> Result:
    """Replace the instance's config, devices and the other given fields with ``a``, if
    the result is valid and still fits its member."""
    a = {**a, "profiles": a.get("profiles", inst.profiles)}
    spec = _spec_error(state, a)
    if isinstance(spec, str):
        return fail(400, spec)
    problem = ha.ha_problem(state, inst.type, inst.location, *spec)
    if problem:
        return fail(400, problem)
    volatile = {k: v for k, v in inst.config.items() if k.startswith("volatile.")}
    grown = copy.copy(inst)
    grown.config, grown.devices = {**volatile, **a.get("config", {})}, a.get("devices", {})
    grown.profiles = list(a["profiles"])
    problem = resize_problem(state, inst.location, inst.demand,
                             reservations.demand(state, grown))
    if problem:
        return fail(400, problem)
    inst.config = {**volatile, **a.get("config", {})}
    inst.devices = _devices_copy(a.get("devices", {}))
    inst.profiles = list(a["profiles"])
    inst.description = str(a.get("description", inst.description))
    if "ephemeral" in a:
        inst.ephemeral = bool(a["ephemeral"])
    reservations.refresh(state, inst)
    inst.generation += 1
    inst.spec_gen = inst.generation
    return ok({"generation": inst.generation})


def rename(state: State, cmd: Command) -> Result:
    inst = _get(state, cmd)
    if isinstance(inst, Result):
        return inst
    new = cmd.args.get("new_name")
    problem = validate.instance_name_error(new)
    if problem:
        return fail(400, problem)
    if new in state.instances:
        return fail(409, f"Name {new!r} already in use")
    if inst.power != "Stopped" or inst.observed.status != "Stopped":
        return fail(400, "Renaming of running instance not allowed")
    del state.instances[inst.name]
    if not inst.observed.name:  # the host has it under this name until the agent renames
        inst.observed.name = inst.name
    inst.generation += 1
    inst.name_gen = inst.generation
    inst.name = str(new)
    if inst.observed.name == inst.name:  # renamed back before the agent came to it
        inst.observed.name = ""
    state.instances[inst.name] = inst
    return ok({"generation": inst.generation})


def delete(state: State, cmd: Command) -> Result:
    inst = _get(state, cmd)
    if isinstance(inst, Result):
        return inst
    if not cmd.args.get("force") and (inst.power != "Stopped"):
        return fail(400, "Instance is running")
    inst.power = "Deleted"
    inst.generation += 1
    return ok({"generation": inst.generation})


def snapshot(state: State, cmd: Command) -> Result:
    """Add an entry to the desired snapshot set; the agent takes it at once (woken by
    this commit) and its report makes it ``ready`` (shown) or drops it (failed)."""
    inst = _get(state, cmd)
    if isinstance(inst, Result):
        return inst
    snap = cmd.args.get("snapshot")
    problem = validate.entity_name_error("Snapshot", snap)
    if problem:
        return fail(400, problem)
    if snapshot_name_taken(inst, snap):
        return fail(409, "Snapshot already exists")
    if cmd.args.get("stateful"):
        return fail(400, "Stateful snapshots are not supported")
    inst.generation += 1
    inst.snapshots[str(snap)] = Snapshot(
        name=str(snap), created_at=cmd.time, config=dict(inst.config),
        devices=copy.deepcopy(inst.devices), profiles=list(inst.profiles),
        description=str(cmd.args.get("description", "")),
        expires_at=float(cmd.args.get("expires_at", 0) or 0), generation=inst.generation)
    return ok({"generation": inst.generation})


def _shown_snapshot(state: State, cmd: Command) -> tuple[Instance, Snapshot] | Result:
    inst = _get(state, cmd)
    if isinstance(inst, Result):
        return inst
    snap = inst.snapshots.get(cmd.args.get("snapshot", ""))
    if snap is None or not snap.shown:
        return fail(404, "Snapshot not found")
    return inst, snap


def snapshot_delete(state: State, cmd: Command) -> Result:
    found = _shown_snapshot(state, cmd)
    if isinstance(found, Result):
        return found
    inst, snap = found
    snap.deleted = True  # hidden at once; removed when the agent reports the deletion
    inst.generation += 1
    snap.generation = inst.generation
    return ok({"generation": inst.generation})


def snapshot_rename(state: State, cmd: Command) -> Result:
    """Rename the entry; it keeps the name the host has it under (``local``) until the
    agent reports the rename, so renames that pile up are one."""
    found = _shown_snapshot(state, cmd)
    if isinstance(found, Result):
        return found
    inst, snap = found
    new = cmd.args.get("new_name")
    problem = validate.entity_name_error("Snapshot", new)
    if problem:
        return fail(400, problem)
    if new != snap.local and snapshot_name_taken(inst, new):
        return fail(409, "Snapshot already exists")
    del inst.snapshots[snap.name]
    if inst.restore_snap == snap.name:  # a restore not yet carried out follows it
        inst.restore_snap = str(new)
    snap.local = "" if snap.local == new else snap.local or snap.name
    snap.name = str(new)
    inst.snapshots[snap.name] = snap
    inst.generation += 1
    snap.generation = inst.generation
    return ok({"generation": inst.generation})


def restore(state: State, cmd: Command) -> Result:
    """Give the instance the snapshot's config at once, and ask the agent to restore
    its files (a counter, as a restart is: ``restore_gen`` against the report's)."""
    found = _shown_snapshot(state, cmd)
    if isinstance(found, Result):
        return found
    inst, snap = found
    inst.config = {**{k: v for k, v in inst.config.items() if k.startswith("volatile.")},
                   **{k: v for k, v in snap.config.items() if not k.startswith("volatile.")}}
    inst.devices = copy.deepcopy(snap.devices)
    inst.profiles = list(snap.profiles)
    reservations.refresh(state, inst)
    inst.generation += 1
    inst.restore_gen, inst.restore_snap = inst.generation, snap.name
    return ok({"generation": inst.generation})


def observed(state: State, cmd: Command) -> Result:
    """The agent's report: generation reached, status seen, restarts done, the reporting
    host, and the error if the pass failed. A failed pass that covers every change
    settles the desired power state on what was observed, so nothing is retried."""
    a = cmd.args
    inst = state.instance_by_uid(a.get("uid", ""))
    if inst is None:
        return ok(None)  # reports about purged instances are harmless
    generation = int(a.get("generation", 0))
    error = str(a.get("error", ""))
    done = [act for act in inst.pending if act.generation <= generation]
    inst.pending = [act for act in inst.pending if act.generation > generation]
    seen = inst.observed
    if generation > seen.generation:
        seen.generation = generation
    seen.status = str(a.get("status", seen.status))
    seen.error = error
    seen.boots = int(a.get("boots", seen.boots))
    seen.host = shared(str(a.get("host", seen.host)))
    for act in done:
        _settle(state, inst, act, error if act.generation == generation else "")
    settle_snapshots(inst, a.get("snapshots"), a.get("snapshot_failed"))
    inst.results[generation] = error
    for old in sorted(inst.results)[:-KEEP_RESULTS]:
        del inst.results[old]
    if state.instances.get(inst.name) is not inst:
        return ok(None)  # a queued create failed or a queued delete was done
    _settle_desired(state, inst, a, generation, error)
    return ok(None)


def _settle_desired(state: State, inst: Instance, a: dict[str, Any], generation: int,
                    error: str) -> None:
    """Apply what the report says of the instance's existence, name and spec
    (node_agent/desired.py): a failed create drops the record (nothing half-created
    stays), a done delete purges it, a failed delete keeps it as it is, a failed rename
    gives it its old name back (when still free), and a report that covers every
    change settles the power fields."""
    seen = inst.observed
    if "created" in a or not seen.created:
        # An agent from before the field says nothing: its first report follows its create.
        seen.created = bool(a.get("created", seen.created or not error))
        if seen.created:
            inst.from_replica = ""  # the failover's new member has made it
        elif error and not inst.from_replica:
            _remove(state, inst)
            return
        # A failover's create that failed keeps the record: the pet is not dropped for
        # want of a replica; its error shows, and the next failover or the operator acts.
    if "spec_gen" in a:
        seen.spec_gen = max(seen.spec_gen, int(a["spec_gen"]))
    if "name" in a:
        _settle_name(state, inst, str(a["name"]), error)
    if inst.power == "Deleted":
        if generation >= inst.generation and not error:
            _remove(state, inst)
        elif error and generation >= inst.generation:
            inst.power = seen.status
        return
    if generation >= inst.generation:
        _settle_power(inst, error)


def _settle_name(state: State, inst: Instance, local: str, error: str) -> None:
    """The host has the instance as ``local`` ("" = its record's name)."""
    seen = inst.observed
    seen.name = "" if local == inst.name else shared(local)
    if error and seen.name and seen.name not in state.instances:
        del state.instances[inst.name]  # the rename failed: the record follows the host
        inst.name, seen.name = seen.name, ""
        state.instances[inst.name] = inst


def _settle_power(inst: Instance, error: str) -> None:
    """Apply a report that covers every desired change to the power fields."""
    seen = inst.observed
    stateful = bool(inst.power_args and inst.power_args.get("stateful"))
    if error:
        inst.power = seen.status if seen.status in POWER_AFTER.values() else "Stopped"
        inst.boots, inst.power_args = seen.boots, None
    elif seen.status == "Running":
        inst.stateful = False  # a start (stateful or not) used up or dropped the checkpoint
        if stateful:
            inst.power_args = None  # restored once; a later reboot boots afresh
    elif inst.power == "Stopped" and stateful and seen.status == "Stopped":
        inst.stateful = True  # the checkpoint waits in state/ for the next start


def _settle(state: State, inst: Instance, act: Action, error: str) -> None:
    """A queued action from a snapshot of before, reported (the snapshot kinds settle
    through the report's ``snapshots``: ``apply_snapshots``)."""
    if act.kind == "create" and error:
        _remove(state, inst)  # nothing half-created stays behind
    elif act.kind == "delete" and not error:
        _remove(state, inst)
    elif act.kind == "delete" and error:
        inst.power = inst.observed.status
    elif act.kind == "stop" and act.args.get("stateful") and not error:
        inst.stateful = True  # a queued stop from an older snapshot, settled as it was
    elif act.kind in ("start", "restart") and not error:
        inst.stateful = False


def observe_status(state: State, cmd: Command) -> Result:
    """A status change the agent saw without an action (e.g. poweroff inside); only
    once the agent has reported every change (else its report will say)."""
    inst = state.instance_by_uid(cmd.args.get("uid", ""))
    if inst is not None and not inst.busy:
        inst.observed.status = str(cmd.args.get("status", inst.observed.status))
        if inst.observed.status == "Stopped" and inst.power != "Deleted":
            inst.power = "Stopped"
    return ok(None)


def purge(state: State, cmd: Command) -> Result:
    """Drop a record whose creation the API gave up on (never used for live instances)."""
    inst = state.instance_by_uid(cmd.args.get("uid", ""))
    if inst is not None:
        _remove(state, inst)
    return ok(None)


def _remove(state: State, inst: Instance) -> None:
    if state.instances.get(inst.name) is inst:
        del state.instances[inst.name]
        reservations.release(state, inst)


HANDLERS = {
    "instance.create": create,
    "instance.create_many": create_many,
    "instance.action": action,
    "instance.update": update,
    "instance.patch": patch,
    "instance.rename": rename,
    "instance.delete": delete,
    "instance.snapshot": snapshot,
    "instance.snapshot_delete": snapshot_delete,
    "instance.snapshot_rename": snapshot_rename,
    "instance.restore": restore,
    "instance.observed": observed,
    "instance.observe_status": observe_status,
    "instance.purge": purge,
}
