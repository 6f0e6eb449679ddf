"""Apply handlers for the cluster, images, aliases, profiles and server config."""

from __future__ import annotations

import copy
from typing import Any

from cluster.state import etags, ha, reservations, validate
from cluster.state.apply_members import capacity_of, instance_types_of
from cluster.state.commands import Command, Result, fail, ok
from cluster.state.model import Alias, Image, Member, Network, Profile, State, StoragePool
from cluster.state.placement import growth_problem


def bootstrap(state: State, cmd: Command) -> Result:
    """Make a one-member cluster: its member, pool, network and default profile."""
    if state.members:
        return fail(409, "The cluster is already initialised")
    a = cmd.args
    member = a["member"]
    state.members[member["name"]] = Member(
        name=member["name"], address=member.get("address", ""),
        architecture=member.get("architecture", "x86_64"),
        raft_address=member.get("raft_address", ""), roles=["database"],
        heartbeat_at=cmd.time, joined_at=cmd.time,
        capacity=capacity_of(member.get("capacity")))
    types = instance_types_of(member.get("instance_types"))
    if types is not None:  # known at once: a launch right after init needs no heartbeat
        state.members[member["name"]].instance_types = types
    pool = a["pool"]
    state.storage_pools[pool["name"]] = StoragePool(pool["name"], pool["driver"],
                                                    dict(pool.get("config", {})))
    net = a["network"]
    state.networks[net["name"]] = Network(net["name"], "bridge", dict(net.get("config", {})))
    state.profiles["default"] = Profile(
        name="default", description="Default corral profile",
        devices={"root": {"type": "disk", "path": "/", "pool": pool["name"]},
                 "eth0": {"type": "nic", "network": net["name"], "name": "eth0"}})
    state.config.update(a.get("config", {}))
    return ok(None)


def image_add(state: State, cmd: Command) -> Result:
    a = cmd.args
    fp = a.get("fingerprint", "")
    if not isinstance(fp, str) or len(fp) != 64:
        return fail(400, "Invalid image fingerprint")
    image = state.images.get(fp)
    if image is None:
        image = Image(fingerprint=fp, info=dict(a.get("info", {})),
                      public=bool(a.get("public", False)), uploaded_at=cmd.time)
        state.images[fp] = image
    member = a.get("member")
    if member and member not in image.members:
        image.members.append(member)
    return ok({"fingerprint": fp})


def image_update(state: State, cmd: Command) -> Result:
    image = state.images.get(cmd.args.get("fingerprint", ""))
    if image is None:
        return fail(404, "Image not found")
    if "public" in cmd.args:
        image.public = bool(cmd.args["public"])
    if "properties" in cmd.args:
        props = cmd.args["properties"]
        if not isinstance(props, dict):
            return fail(400, "Image properties must be a mapping")
        image.info["properties"] = dict(props)
    return ok(None)


def image_delete(state: State, cmd: Command) -> Result:
    fp = cmd.args.get("fingerprint", "")
    if fp not in state.images:
        return fail(404, "Image not found")
    del state.images[fp]
    for name in [n for n, alias in state.aliases.items() if alias.target == fp]:
        del state.aliases[name]
    return ok(None)


def alias_create(state: State, cmd: Command) -> Result:
    a = cmd.args
    problem = validate.entity_name_error("Alias", a.get("name"))
    if problem:
        return fail(400, problem)
    if a["name"] in state.aliases:
        return fail(409, "Alias already exists")
    if a.get("target") not in state.images:
        return fail(404, "Image not found")
    state.aliases[a["name"]] = Alias(a["name"], a["target"], str(a.get("description", "")),
                                     state.images[a["target"]].info.get("type", "container"))
    return ok(None)


def alias_update(state: State, cmd: Command) -> Result:
    alias = state.aliases.get(cmd.args.get("name", ""))
    if alias is None:
        return fail(404, "Alias not found")
    target = cmd.args.get("target", alias.target)
    if target not in state.images:
        return fail(404, "Image not found")
    alias.target = target
    alias.description = str(cmd.args.get("description", alias.description))
    return ok(None)


def alias_rename(state: State, cmd: Command) -> Result:
    alias = state.aliases.get(cmd.args.get("name", ""))
    if alias is None:
        return fail(404, "Alias not found")
    new = cmd.args.get("new_name")
    problem = validate.entity_name_error("Alias", new)
    if problem:
        return fail(400, problem)
    if new in state.aliases:
        return fail(409, "Alias already exists")
    del state.aliases[alias.name]
    alias.name = str(new)
    state.aliases[alias.name] = alias
    return ok(None)


def alias_delete(state: State, cmd: Command) -> Result:
    if state.aliases.pop(cmd.args.get("name", ""), None) is None:
        return fail(404, "Alias not found")
    return ok(None)


def _profile_problem(state: State, a: dict[str, object]) -> str:
    return validate.config_error(a.get("config", {})) or validate.devices_error(
        a.get("devices", {}))


def profile_create(state: State, cmd: Command) -> Result:
    a = cmd.args
    problem = validate.entity_name_error("Profile", a.get("name")) or _profile_problem(state, a)
    if problem:
        return fail(400, problem)
    if a["name"] in state.profiles:
        return fail(409, "Profile already exists")
    state.profiles[a["name"]] = Profile(a["name"], dict(a.get("config", {})),
                                        copy.deepcopy(a.get("devices", {})),
                                        str(a.get("description", "")))
    return ok(None)


def profile_update(state: State, cmd: Command) -> Result:
    """PUT: config and devices replaced. With ``if_match`` (the client's ``If-Match``),
    only while the committed profile still has that ETag: 412 and no change otherwise."""
    a = cmd.args
    profile = state.profiles.get(a.get("name", ""))
    if profile is None:
        return fail(404, "Profile not found")
    problem = etags.mismatch(a.get("if_match"), etags.profile(profile))
    if problem:
        return fail(412, problem)
    return _profile_replace(state, profile, a)


def profile_patch(state: State, cmd: Command) -> Result:
    """PATCH: the given config keys and devices merged into the committed profile (here,
    so concurrent PATCHes of different keys both stay); ``if_match`` as in PUT."""
    a = cmd.args
    profile = state.profiles.get(a.get("name", ""))
    if profile is None:
        return fail(404, "Profile not found")
    problem = etags.mismatch(a.get("if_match"), etags.profile(profile))
    if problem:
        return fail(412, problem)
    problem = _profile_problem(state, a)
    if problem:
        return fail(400, problem)
    merged = {"config": {**profile.config, **a.get("config", {})},
              "devices": {**profile.devices, **a.get("devices", {})}}
    if "description" in a:
        merged["description"] = a["description"]
    return _profile_replace(state, profile, merged)


def _profile_replace(state: State, profile: Profile, a: dict[str, Any]) -> Result:
    """Replace the profile's config, devices and description with ``a``, unless that is
    invalid or grows an instance past its member's capacity."""
    problem = _profile_problem(state, a)
    if problem:
        return fail(400, problem)
    users = [i for i in state.instances.values() if profile.name in i.profiles]
    before = {i.location: reservations.reserved(state, i.location) for i in users}
    old = (profile.config, profile.devices, profile.description)
    profile.config = dict(a.get("config", {}))
    profile.devices = copy.deepcopy(a.get("devices", {}))
    profile.description = str(a.get("description", profile.description))
    for inst in users:
        reservations.refresh(state, inst)
    problem = next((p for m in sorted(before) if (p := growth_problem(state, m, before[m]))), "")
    problem = problem or next((f"instance {i.name}: {p}" for i in users
                               if (p := ha.instance_ha_problem(state, i))), "")
    if problem:  # limits raised past a member's capacity: put everything back
        profile.config, profile.devices, profile.description = old
        for inst in users:
            reservations.refresh(state, inst)
        return fail(400, f"Profile {profile.name!r} cannot be changed: {problem}")
    return ok(None)


def _profile_users(state: State, name: str) -> list[str]:
    return [i.name for i in state.instances.values() if name in i.profiles]


def profile_delete(state: State, cmd: Command) -> Result:
    name = cmd.args.get("name", "")
    if name not in state.profiles:
        return fail(404, "Profile not found")
    if name == "default":
        return fail(400, "The 'default' profile cannot be deleted")
    if _profile_users(state, name):
        return fail(400, "Profile is currently in use")
    del state.profiles[name]
    return ok(None)


def profile_rename(state: State, cmd: Command) -> Result:
    name, new = cmd.args.get("name", ""), cmd.args.get("new_name")
    if name not in state.profiles:
        return fail(404, "Profile not found")
    if name == "default":
        return fail(400, "The 'default' profile cannot be renamed")
    problem = validate.entity_name_error("Profile", new)
    if problem:
        return fail(400, problem)
    if new in state.profiles:
        return fail(409, "Profile already exists")
    if _profile_users(state, name):
        return fail(400, "Profile is currently in use")
    profile = state.profiles.pop(name)
    profile.name = str(new)
    state.profiles[profile.name] = profile
    return ok(None)


def config_set(state: State, cmd: Command) -> Result:
    """The cluster's server config replaced (PUT), or with ``merge`` (PATCH) the given
    keys merged into the committed config, so a concurrent change of another key stays."""
    values = cmd.args.get("config", {})
    if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        return fail(400, "Server config must be a mapping of strings")
    if cmd.args.get("merge"):
        values = {**state.config, **values}
    problem = validate.cluster_config_error(values)
    if problem:
        return fail(400, problem)
    state.config = dict(values)
    return ok(None)


def member_heartbeat(state: State, cmd: Command) -> Result:
    """Count the heartbeat (the Raft leader judges liveness from the count, on its own
    clock) and keep what it reports. ``heartbeat_at`` is the sender's clock, for display.
    Returns ``{"beats": count}`` so the leader knows which heartbeat it heard."""
    member = state.members.get(cmd.args.get("name", ""))
    if member is None:
        return fail(404, "Cluster member not found")
    member.heartbeat_at = cmd.time
    member.beats += 1
    capacity = cmd.args.get("capacity")
    if isinstance(capacity, dict):
        member.capacity = capacity_of(capacity)
    types = instance_types_of(cmd.args.get("instance_types"))
    if types is not None:
        member.instance_types = types
    return ok({"beats": member.beats})


HANDLERS = {
    "cluster.bootstrap": bootstrap,
    "member.heartbeat": member_heartbeat,
    "image.add": image_add,
    "image.update": image_update,
    "image.delete": image_delete,
    "alias.create": alias_create,
    "alias.update": alias_update,
    "alias.rename": alias_rename,
    "alias.delete": alias_delete,
    "profile.create": profile_create,
    "profile.update": profile_update,
    "profile.patch": profile_patch,
    "profile.delete": profile_delete,
    "profile.rename": profile_rename,
    "config.set": config_set,
}
