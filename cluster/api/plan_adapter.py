"""Placement on the API side: plan with the scheduler on a snapshot of the state.

The plan is only a proposal: ``instance.create`` (and ``instance.move_begin``) re-check
the chosen member inside apply and refuse with 409 when it no longer fits, and the
caller plans again on fresh state (``PLAN_ATTEMPTS`` times).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cluster.api.response import ApiError, bad_request
from cluster.controllers.control_metrics import PlaceFn, unrecorded
from cluster.state import reservations
from cluster.state.apply_instances import expanded
from cluster.state.cluster_view import view_from_state
from cluster.state.errors import Conflict
from cluster.state.model import State
from corral_shared.resources import ZERO, Resources
from scheduler.plan import Plan, explain_json, explain_text
from scheduler.request import request_for

PLAN_ATTEMPTS = 3


def plan_instance(state: State, *, request_id: str, name: str, type_: str, architecture: str,
                  config: dict[str, str], devices: dict[str, dict[str, str]],
                  profiles: list[str], target: str = "",
                  exclude: Iterable[str] = (),
                  pending: dict[str, Resources] | None = None,
                  purpose: str = "create", place: PlaceFn = unrecorded) -> Plan:
    """The scheduler's plan for an instance spec (profiles expanded here). ``pending``:
    what plans made alongside this one (not committed yet) will add to members.
    ``place`` runs the scheduler: ``ControlMetrics.place`` counts the run under
    ``purpose``; the default counts nothing (dry runs)."""
    if target and not target.startswith("@") and target not in state.members:
        raise bad_request(f"Cluster member {target!r} not found")
    full_config, full_devices = expanded(state, config, devices,
                                         [p for p in profiles if p in state.profiles])
    try:
        request = request_for(request_id, name, type_, architecture, full_config, full_devices,
                              target=target, exclude=frozenset(exclude))
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    reserved = reservations.totals(state)
    if pending:
        reserved = {**reserved, **{m: reserved.get(m, ZERO) + r for m, r in pending.items()}}
    view = view_from_state(state, reserved=reserved)
    return place(purpose, view, request)


def chosen_member(plan: Plan) -> str:
    """The plan's member, or the scheduler's reason as the API's error."""
    if plan.member is None:
        raise ApiError(400, f"No cluster member can take the instance: {plan.error}")
    return plan.member


def is_stale_plan(exc: BaseException) -> bool:
    """A refusal by apply's re-check: the state moved on; plan again."""
    return isinstance(exc, Conflict) and "no longer fits" in str(exc)


def explain_response(plan: Plan) -> dict[str, Any]:
    """The explanation as JSON, with the terminal rendering under ``text``."""
    return {**explain_json(plan), "text": explain_text(plan)}
