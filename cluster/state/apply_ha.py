"""Apply handlers for HA instances: replica holders, replication progress and failover.

- ``instance.ha_replicas {uid, members, epoch}``, from the replication controller on the
  leader: the members that hold the instance's replicas (records of members kept stay,
  new ones start empty). Never its own member, never a member that cannot run it.
- ``instance.replica_synced {uid, member, source, placement_epoch, snapshot, synced_at,
  bytes}``, from the source's agent after a shipment: holder ``member`` has complete
  replica ``snapshot``, read from ``source`` from ``synced_at`` on. Refused unless the
  source is still the instance's member under that placement epoch and ``member`` is
  still a holder: a fenced old source cannot report, as it cannot ship (the holder checks
  the same before it accepts a byte).
- ``instance.failover {uid, name, target, placement_epoch, epoch, lag}``, from the
  failover controller: the instance lives on ``target`` from now on, started from the
  newest complete replica there. The placement epoch rises by one, so the old member and
  anything it still sends are refused from now on.
- ``instance.ha_waiting {uid, reason, epoch}``: why no member can take it now ("" once
  one can): shown by the API and ``corral list``.

``placement_epoch`` is the instance's epoch; ``epoch`` alone is the controllers' (see
``apply_intents.fence``), which every controller command carries.
"""

from __future__ import annotations

from cluster.state import reservations
from cluster.state.commands import Command, Result, fail, ok
from cluster.state.ha import can_hold, shipment_problem
from cluster.state.model import Instance, Observed, Replica, State
from cluster.state.placement import placement_problem


def _by_uid(state: State, cmd: Command) -> Instance | Result:
    uid = cmd.args.get("uid")
    inst = state.instance_by_uid(uid) if isinstance(uid, str) and uid else None
    if inst is None:
        return fail(404, "Instance not found")
    return inst


def _epoch_problem(inst: Instance, cmd: Command) -> str:
    epoch = cmd.args.get("placement_epoch")
    if type(epoch) is not int or epoch != inst.epoch:
        return (f"Stale placement epoch {epoch!r}: instance {inst.name} is under epoch "
                f"{inst.epoch} on {inst.location}")
    return ""


def set_replicas(state: State, cmd: Command) -> Result:
    inst = _by_uid(state, cmd)
    if isinstance(inst, Result):
        return inst
    members = cmd.args.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        return fail(400, "members must be a list of member names")
    if len(set(members)) != len(members):
        return fail(400, "A member holds one replica at most")
    for name in members:
        member = state.members.get(name)
        if member is None:
            return fail(400, f"Cluster member {name!r} not found")
        if name == inst.location:
            return fail(400, f"Member {name} runs {inst.name}: it cannot hold its replica")
        if not can_hold(member, inst.type):
            return fail(400, f"Member {name} cannot hold a replica of a {inst.type}")
    old = inst.replicas or {}
    inst.replicas = {name: old.get(name) or Replica(name) for name in members} or None
    return ok(None)


def replica_synced(state: State, cmd: Command) -> Result:
    inst = _by_uid(state, cmd)
    if isinstance(inst, Result):
        return inst
    a = cmd.args
    member = str(a.get("member", ""))
    problem = shipment_problem(inst, member, a.get("source"), a.get("placement_epoch"))
    if problem:
        return fail(409, problem)
    replica = inst.replicas[member]  # type: ignore[index]  # shipment_problem found it
    snapshot, synced_at = a.get("snapshot"), a.get("synced_at")
    if not isinstance(snapshot, str) or not snapshot or not isinstance(synced_at, int | float):
        return fail(400, "snapshot (a name) and synced_at (seconds) are required")
    if synced_at >= replica.synced_at:  # a late report of an older shipment changes nothing
        replica.snapshot, replica.synced_at = snapshot, float(synced_at)
        replica.epoch, replica.bytes = inst.epoch, int(a.get("bytes", 0) or 0)
    return ok(None)


def failover(state: State, cmd: Command) -> Result:
    inst = _by_uid(state, cmd)
    if isinstance(inst, Result):
        return inst
    problem = _epoch_problem(inst, cmd)
    if problem:
        return fail(409, problem)
    if inst.intent or inst.moving_to:
        return fail(409, f"Instance {inst.name} is held by a move or an intent")
    target = str(cmd.args.get("target", ""))
    replica = (inst.replicas or {}).get(target)
    if replica is None or not replica.snapshot:
        return fail(409, f"Member {target!r} holds no complete replica of {inst.name}")
    reservations.totals(state)
    problem = placement_problem(
        state, member=target, name=inst.name, type_=inst.type, architecture=inst.architecture,
        demand=inst.demand, placement_group=inst.group, exclude=[inst.location])
    if problem:
        return fail(409, f"Cannot fail {inst.name} over to {target}: {problem}")
    origin = inst.location
    reservations.release(state, inst)
    inst.location = target
    reservations.add(state, inst, (inst.demand, inst.group))
    inst.epoch += 1
    del inst.replicas[target]  # type: ignore[union-attr]  # found in it above
    inst.replicas = inst.replicas or None
    inst.from_replica = replica.snapshot
    inst.ha_waiting = ""
    inst.generation += 1
    # Created anew on the target, from the replica (node_agent/desired.py's create step).
    inst.observed = Observed(generation=inst.observed.generation, status="Stopped",
                             created=False, spec_gen=0, restore_gen=inst.restore_gen)
    # Instance snapshots are not replicated (only the root volume is): they stay on the
    # old member, which drops them with its stale copy. Their names are recorded.
    left = sorted(inst.snapshots)
    inst.snapshots = {}
    lag = cmd.args.get("lag")
    inst.failover = {"from": origin, "to": target, "at": cmd.time, "epoch": inst.epoch,
                     "snapshot": replica.snapshot, "synced_at": replica.synced_at,
                     "lag": float(lag) if isinstance(lag, int | float) else None,
                     "snapshots_left": left}
    return ok({"epoch": inst.epoch, "generation": inst.generation})


def waiting(state: State, cmd: Command) -> Result:
    inst = _by_uid(state, cmd)
    if isinstance(inst, Result):
        return inst
    reason = cmd.args.get("reason", "")
    if not isinstance(reason, str):
        return fail(400, "reason must be a string")
    inst.ha_waiting = reason
    return ok(None)


HANDLERS = {
    "instance.ha_replicas": set_replicas,
    "instance.replica_synced": replica_synced,
    "instance.failover": failover,
    "instance.ha_waiting": waiting,
}
