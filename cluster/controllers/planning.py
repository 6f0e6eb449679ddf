"""Where an evacuation sends each instance: one pass of the scheduler for all of them,
each plan counting the ones before it (planned alone, concurrent moves would all pick
the same least loaded member). Runs on the leader, inside the evacuation controller.
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.controllers.control_metrics import PlaceFn, unrecorded
from cluster.state import reservations
from cluster.state.apply_instances import expanded
from cluster.state.cluster_view import view_from_state
from cluster.state.model import State
from corral_shared.resources import ZERO, Resources
from scheduler.request import request_for


def plan_targets(state: State, names: Iterable[str], exclude: dict[str, list[str]],
                 place: PlaceFn = unrecorded) -> dict[str, tuple[str, str]]:
    """Per instance name: ``(member, "")`` where it goes, or ``("", why not)``.
    ``exclude[name]``: the members it must not go to (its own, and the targets of
    attempts that failed). ``place`` runs the scheduler (the controller's counts)."""
    found: dict[str, tuple[str, str]] = {}
    pending: dict[str, Resources] = {}
    reserved = reservations.totals(state)
    for name in names:
        inst = state.instances.get(name)
        if inst is None:
            found[name] = ("", "Instance not found")
            continue
        config, devices = expanded(state, inst.config, inst.devices,
                                   [p for p in inst.profiles if p in state.profiles])
        try:
            request = request_for(f"{inst.uid}-evacuate", name, inst.type, inst.architecture,
                                  config, devices,
                                  exclude=frozenset(exclude.get(name, [])))
        except ValueError as exc:
            found[name] = ("", str(exc))
            continue
        view = view_from_state(state, reserved={
            **reserved, **{m: reserved.get(m, ZERO) + r for m, r in pending.items()}})
        plan = place("evacuation", view, request)
        if plan.member is None:
            found[name] = ("", f"No cluster member can take the instance: {plan.error}")
            continue
        found[name] = (plan.member, "")
        pending[plan.member] = pending.get(plan.member, ZERO) + inst.demand
    return found
