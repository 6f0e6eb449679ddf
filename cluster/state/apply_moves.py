"""Apply handlers for moving an instance between members (cold move, live migration of
a running VM with ``live``, evacuation).

``begin`` re-validates the target like a placement and reserves the instance's demand
there while its volume is copied; ``end`` switches the location and frees the source;
``abort`` frees the target. While a move is under way every other change of the
instance is refused (see ``apply_instances._get``).

Under a controller (``cluster/controllers``) each of the three carries ``intent``,
``epoch`` and ``from_phase``: ``apply_intents.fence`` refuses a stale epoch or a step
from another phase, and here the instance must be held by that intent. Without an
intent (today's moves from an API handler) they work as before, but never on an instance
an intent holds.
"""

from __future__ import annotations

from cluster.state import reservations
from cluster.state.commands import Command, Result, fail, ok
from cluster.state.model import Instance, State
from cluster.state.placement import placement_problem


def _instance(state: State, cmd: Command) -> Instance | Result:
    inst = state.instances.get(cmd.args.get("name", ""))
    if inst is None or inst.uid != cmd.args.get("uid"):
        return fail(404, "Instance not found")
    intent = cmd.args.get("intent", "")
    if inst.intent != intent:
        return fail(409, f"Instance {inst.name} is held by intent {inst.intent}" if inst.intent
                    else f"Instance {inst.name} is not held by intent {intent}")
    return inst


def begin(state: State, cmd: Command) -> Result:
    inst = _instance(state, cmd)
    if isinstance(inst, Result):
        return inst
    target = str(cmd.args.get("target", ""))
    if inst.moving_to:
        return fail(409, f"Instance is already being moved to {inst.moving_to}")
    if inst.busy:
        return fail(409, "Instance is busy with another action")
    if target not in state.members:
        return fail(400, f"Cluster member {target!r} not found")
    if target == inst.location:
        return fail(400, f"Instance is already on member {target}")
    if cmd.args.get("live"):
        if inst.type != "virtual-machine":
            return fail(400, "Only virtual machines migrate live; containers move stopped")
        if inst.power != "Running" or inst.observed.status != "Running":
            return fail(400, "Only a running virtual machine migrates live")
    elif inst.power != "Stopped" or inst.observed.status != "Stopped":
        return fail(400, "Stop the instance before moving it")
    reservations.totals(state)  # an older snapshot's totals (and inst.group) first
    problem = placement_problem(
        state, member=target, name=inst.name, type_=inst.type,
        architecture=inst.architecture, demand=inst.demand,
        target=str(cmd.args.get("requested", target)),
        placement_group=inst.group, exclude=[inst.location])
    if problem:
        return fail(409, f"Cannot move {inst.name} to {target}: {problem}")
    inst.moving_to = target
    reservations.hold(state, inst, target, (inst.demand, inst.group))
    return ok(None)


def end(state: State, cmd: Command) -> Result:
    """The volume is on the target: the instance lives there from now on."""
    inst = _instance(state, cmd)
    if isinstance(inst, Result):
        return inst
    if not inst.moving_to or inst.moving_to != cmd.args.get("target"):
        return fail(409, "Instance is not being moved there")
    reservations.release(state, inst)  # from the source; the target holds it since begin
    inst.location, inst.moving_to = inst.moving_to, ""
    origin = cmd.args.get("origin")
    if isinstance(origin, str):
        if origin:
            inst.config["volatile.evacuate.origin"] = origin
        else:
            inst.config.pop("volatile.evacuate.origin", None)
    return ok(None)


def abort(state: State, cmd: Command) -> Result:
    inst = _instance(state, cmd)
    if isinstance(inst, Result):
        return inst
    if not inst.moving_to:
        return ok(None)
    reservations.release(state, inst, inst.moving_to)
    inst.moving_to = ""
    return ok(None)


HANDLERS = {
    "instance.move_begin": begin,
    "instance.move_end": end,
    "instance.move_abort": abort,
}
