"""Apply handlers for cluster membership: join tokens, joining, roles and removal.

Voters are members with the ``database`` role; at most ``cluster.max_voters`` (default 3)
hold it, as in LXD. A join token is single-use and expires by the time carried in the
command, never by a clock read inside apply.

A **witness** (``corral init --join TOKEN --witness``) has the ``witness`` role besides
``database``: it votes and holds no instances and no storage, so two hosts and a witness
keep a quorum (2 of 3) when either host is lost. Its rule: a witness is always a voter
and counts toward ``cluster.max_voters``. When the voter seats are full as it joins it
takes the seat of a host voter (an offline one first, else the one that joined last),
which the voters controller then moves in Raft; only when every seat is a witness's is
the join refused. The witness role is given at join only, and a witness is never
demoted, by a user or by the voters controller (remove the member to drop it).
"""

from __future__ import annotations

import hmac

from cluster.state import validate
from cluster.state.commands import Command, Result, fail, ok
from cluster.state.model import JoinToken, Member, State
from corral_shared.liveness import DEFAULT_OFFLINE_THRESHOLD, MIN_OFFLINE_THRESHOLD

VOTER = "database"
WITNESS = "witness"
ROLES = {VOTER, "database-standby"}  # what a user may set; WITNESS is given at join only
DEFAULT_MAX_VOTERS = 3


def offline_threshold(state: State) -> float:
    """``cluster.offline_threshold`` in seconds (default 4, at least 3: the figures
    that members' fencing leases are built on, ``corral_shared.liveness``)."""
    value = state.config.get("cluster.offline_threshold", "")
    try:
        seconds = float(value) if value else DEFAULT_OFFLINE_THRESHOLD
    except ValueError:
        seconds = DEFAULT_OFFLINE_THRESHOLD
    return max(MIN_OFFLINE_THRESHOLD, seconds)


ONLINE, OFFLINE, EVACUATED = "ONLINE", "OFFLINE", "EVACUATED"


def member_status(member: Member) -> str:
    """EVACUATED when evacuated, else the liveness the Raft leader committed (ONLINE or
    OFFLINE). No clock is read: every replica and apply see the same status."""
    if member.state == EVACUATED:
        return EVACUATED
    return member.liveness if member.liveness in (ONLINE, OFFLINE) else ONLINE


def plan_promotions(state: State) -> list[tuple[str, str]]:
    """``(offline voter, online follower)`` pairs: who should hand over its vote. A
    witness keeps its vote while it is offline, and is never a follower to promote."""
    lost = sorted(m.name for m in voters(state)
                  if member_status(m) == OFFLINE and not is_witness(m))
    ready = sorted(m.name for m in state.members.values()
                   if VOTER not in m.roles and member_status(m) == ONLINE
                   and not is_witness(m))
    return list(zip(lost, ready, strict=False))


def member_liveness(state: State, cmd: Command) -> Result:
    """The leader's judgement ``{name, status, beats}``: ONLINE or OFFLINE, made when it had
    heard ``beats`` heartbeats of the member. A compare-and-set on the heartbeat count, so a
    stale judgement (a deposed leader's, or one overtaken by a heartbeat) changes nothing:
    OFFLINE only if no heartbeat committed since ``beats``; ONLINE only on a heartbeat
    committed after the one the member was judged OFFLINE on."""
    a = cmd.args
    member = state.members.get(a.get("name", ""))
    if member is None:
        return fail(404, "Cluster member not found")
    status, beats = a.get("status"), a.get("beats")
    if status not in (ONLINE, OFFLINE) or not isinstance(beats, int) or isinstance(beats, bool):
        return fail(400, "Liveness needs a status (ONLINE or OFFLINE) and a heartbeat count")
    if member.liveness == status:
        return ok(None)
    if status == OFFLINE and beats != member.beats:
        return fail(409, f"Member {member.name!r} sent a heartbeat since it was judged")
    if status == ONLINE and not member.liveness_beats < beats <= member.beats:
        return fail(409, f"No heartbeat of {member.name!r} since it went offline")
    member.liveness, member.liveness_beats = str(status), beats
    return ok(None)


def raft_drift(state: State, self_raft: str, counted: set[str]) -> tuple[list[str], list[str]]:
    """``(to add, to remove)``: how Raft's voter set (``counted``, besides ``self_raft``)
    differs from the members holding the database role."""
    wanted = {m.raft_address for m in voters(state)
              if m.raft_address and m.raft_address != self_raft}
    return sorted(wanted - counted), sorted(counted - wanted)


def max_voters(state: State) -> int:
    value = state.config.get("cluster.max_voters", "")
    return int(value) if value.isdigit() and int(value) >= 1 else DEFAULT_MAX_VOTERS


def voters(state: State) -> list[Member]:
    return [m for m in state.members.values() if VOTER in m.roles]


def is_witness(member: Member) -> bool:
    """A voter that holds no instances and no storage (joined with ``--witness``)."""
    return WITNESS in member.roles


def seat_for_witness(state: State) -> tuple[str | None, str]:
    """``(host voter to demote or None, problem)`` for a witness joining now: None while a
    voter seat is free; else the host voter whose seat it takes (an offline one first,
    then the one that joined last); a problem when every seat is a witness's."""
    if len(voters(state)) < max_voters(state):
        return None, ""
    hosts = [m for m in voters(state) if not is_witness(m)]
    if not hosts:
        return None, (f"Every voter seat (cluster.max_voters={max_voters(state)}) is held by "
                      f"a witness; raise cluster.max_voters to add another")
    seat = max(hosts, key=lambda m: (member_status(m) == OFFLINE, m.joined_at, m.name))
    return seat.name, ""


def _name_error(name: object) -> str:
    return validate.instance_name_error(name).replace("Instance", "Member")


def join_token_add(state: State, cmd: Command) -> Result:
    a = cmd.args
    name = a.get("name")
    problem = _name_error(name)
    if problem:
        return fail(400, problem)
    if name in state.members:
        return fail(409, f"The cluster already has a member with name {name!r}")
    if name in state.join_tokens:
        return fail(409, f"A join token for {name!r} is already pending")
    expires_at = float(a.get("expires_at", 0) or 0)
    if expires_at <= cmd.time:
        return fail(400, "A join token must expire in the future")
    state.join_tokens[str(name)] = JoinToken(str(name), str(a.get("secret_hash", "")),
                                             cmd.time, expires_at)
    return ok(None)


def join_token_delete(state: State, cmd: Command) -> Result:
    if state.join_tokens.pop(cmd.args.get("name", ""), None) is None:
        return fail(404, "Join token not found")
    return ok(None)


def member_join(state: State, cmd: Command) -> Result:
    """Consume the new member's token and add it; a voter while voters are short, and
    always with ``witness`` (see the module docstring for the seat a witness takes)."""
    a = cmd.args
    name = str(a.get("name", ""))
    token = state.join_tokens.get(name)
    if token is None or not hmac.compare_digest(token.secret_hash,
                                                str(a.get("secret_hash", ""))):
        return fail(403, "Invalid or already used join token")
    if cmd.time > token.expires_at:
        return fail(403, "The join token has expired")
    address, raft = str(a.get("address", "")), str(a.get("raft_address", ""))
    if not address or not raft:
        return fail(400, "A joining member needs an address and a Raft address")
    for member in state.members.values():
        if address in (member.address, member.raft_address) or raft in (
                member.address, member.raft_address):
            return fail(409, f"Address already in use by member {member.name!r}")
    witness = a.get("witness") is True
    demoted, problem = seat_for_witness(state) if witness else (None, "")
    if problem:
        return fail(409, problem)
    if witness:
        roles = [VOTER, WITNESS]
    else:
        roles = [VOTER] if len(voters(state)) < max_voters(state) else []
    if demoted is not None:
        state.members[demoted].roles = [r for r in state.members[demoted].roles if r != VOTER]
    state.members[name] = Member(name=name, address=address, raft_address=raft,
                                 architecture=str(a.get("architecture", "x86_64")),
                                 roles=roles, heartbeat_at=cmd.time, joined_at=cmd.time,
                                 capacity=capacity_of(a.get("capacity")))
    types = instance_types_of(a.get("instance_types"))
    if types is not None:
        state.members[name].instance_types = types
    del state.join_tokens[name]
    return ok({"roles": roles})


def capacity_of(reported: object) -> dict[str, float]:
    """The well-formed part of a member's reported capacity (cpu, memory, disk)."""
    if not isinstance(reported, dict):
        return {}
    return {k: float(v) for k, v in reported.items()
            if k in ("cpu", "memory", "disk") and isinstance(v, (int, float)) and v >= 0}


INSTANCE_TYPES = frozenset({"container", "virtual-machine"})


def instance_types_of(reported: object) -> list[str] | None:
    """The instance types a member reports it runs, sorted; None when the report is
    missing or names an unknown type (the record keeps what it had)."""
    if not isinstance(reported, list):
        return None
    if not all(isinstance(t, str) and t in INSTANCE_TYPES for t in reported):
        return None
    return sorted(set(reported))


def member_remove(state: State, cmd: Command) -> Result:
    name = cmd.args.get("name", "")
    member = state.members.get(name)
    if member is None:
        return fail(404, "Cluster member not found")
    force = bool(cmd.args.get("force"))
    if VOTER in member.roles and len(voters(state)) == 1 and not force:
        return fail(400, "Cannot remove the last voter of the cluster without --force")
    hosted = [i.name for i in state.instances.values() if i.location == name]
    if hosted and not force:
        return fail(400, f"Member {name!r} still hosts instances: {', '.join(sorted(hosted))}")
    del state.members[name]
    return ok(None)


def _roles_error(state: State, member: Member, roles: object) -> str:
    if not isinstance(roles, list):
        return f"Roles must be a subset of {sorted(ROLES)}"
    if WITNESS in roles and not is_witness(member):
        return ("The witness role is given only when a member joins "
                "(corral init --join TOKEN --witness)")
    if not set(roles) - {WITNESS} <= ROLES:
        return f"Roles must be a subset of {sorted(ROLES)}"
    if is_witness(member) and VOTER not in roles:
        return f"Member {member.name!r} is a witness: it always votes (remove it instead)"
    if VOTER in roles and VOTER not in member.roles and len(voters(state)) >= max_voters(state):
        return "The cluster already has its maximum number of voters (cluster.max_voters)"
    if VOTER in member.roles and VOTER not in roles and len(voters(state)) == 1:
        return "Cannot demote the last voter of the cluster"
    return ""


def member_roles(state: State, cmd: Command) -> Result:
    member = state.members.get(cmd.args.get("name", ""))
    if member is None:
        return fail(404, "Cluster member not found")
    roles = cmd.args.get("roles")
    problem = _roles_error(state, member, roles)
    if problem or not isinstance(roles, list):
        return fail(400, problem)
    member.roles = _kept_roles(member, roles)
    return ok(None)


def _kept_roles(member: Member, roles: list[str]) -> list[str]:
    """The roles a user set, with a witness's own role kept (the API may leave it out)."""
    kept = [r for r in roles if r in ROLES]
    return [*kept, WITNESS] if is_witness(member) else kept


def member_update(state: State, cmd: Command) -> Result:
    """LXD's ``PUT /1.0/cluster/members/<name>``: roles, description, config, groups.
    Fields left out of the command keep their value; everything is checked first. With
    ``merge_config`` (PATCH) the given keys are merged into the committed config here,
    so a concurrent change of another key is not lost."""
    a = cmd.args
    member = state.members.get(a.get("name", ""))
    if member is None:
        return fail(404, "Cluster member not found")
    roles = a.get("roles", list(member.roles))
    problem = _roles_error(state, member, roles)
    config = a.get("config", member.config)
    if a.get("merge_config") and isinstance(config, dict):
        config = {**member.config, **config}
    problem = problem or validate.member_config_error(config)
    groups = a.get("groups", member.groups)
    if not isinstance(groups, list):
        problem = problem or "Groups must be a list of names"
    else:
        problem = problem or next((validate.entity_name_error("Cluster group", g)
                                   for g in groups
                                   if validate.entity_name_error("Cluster group", g)), "")
    description = a.get("description", member.description)
    if not isinstance(description, str):
        problem = problem or "Description must be a string"
    if problem or not isinstance(roles, list):
        return fail(400, problem)
    member.roles = _kept_roles(member, roles)
    member.config = {str(k): str(v) for k, v in config.items() if v != ""}
    member.groups = sorted(set(groups))
    member.description = description
    return ok(None)


def member_set_state(state: State, cmd: Command) -> Result:
    """EVACUATED (no new placements; ``cluster evacuate``) or back to ONLINE (``restore``)."""
    member = state.members.get(cmd.args.get("name", ""))
    if member is None:
        return fail(404, "Cluster member not found")
    wanted = cmd.args.get("state")
    if wanted not in (EVACUATED, ONLINE):
        return fail(400, "A member's state is EVACUATED or ONLINE")
    member.state = str(wanted)
    return ok(None)


HANDLERS = {
    "join_token.add": join_token_add,
    "join_token.delete": join_token_delete,
    "member.join": member_join,
    "member.remove": member_remove,
    "member.roles": member_roles,
    "member.update": member_update,
    "member.set_state": member_set_state,
    "member.liveness": member_liveness,
}
