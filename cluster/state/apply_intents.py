"""Apply handlers for intents and the controller epoch, and the fence every command passes.

A controller on the Raft leader drives an intent phase by phase. Apply cannot see Raft's
term, so leadership is fenced by an epoch in the state instead:

- ``controller.claim {member}``: a member that has just become leader takes the next
  epoch (``State.controller``); the result is ``{"epoch": n, "member": name}``.
- Every command a controller submits carries ``epoch``; one that carries any other epoch
  than the current one is refused 409 (``fence``, run by ``apply`` before any handler).
  A deposed leader's late command therefore changes nothing, even if it commits.
- A command that names an ``intent`` (to act on an instance the intent holds) or a
  ``from_phase`` must carry the epoch, and with ``from_phase`` it applies only while the
  intent is in that phase: two controllers (or one retrying) cannot both take a step.

Intents (``model.Intent``):

- ``intent.create {intent, kind, request, plan?, phase?, items?, locks?, member?}``, from
  the API on any member: refused 409 if the id exists or an instance in ``locks``
  (name -> uid) is held by another intent or being moved.
- ``intent.advance {intent, epoch, from_phase, phase, plan?, items?, progress?, lock?,
  unlock?, cancellable?, error?}``: the next phase; ``items`` and ``progress`` merge.
- ``intent.progress {intent, epoch, from_phase?, items?, progress?}``: progress only.
- ``intent.cancel {intent}``, from the API: marks it; the controller undoes what it did.
- ``intent.finish {intent, epoch, from_phase, status, error?}``: done, failed or
  cancelled; frees every instance it held. The last ``KEEP_FINISHED`` finished intents
  are kept (an operation is rendered from one on any member after it ended).
"""

from __future__ import annotations

import copy
from typing import Any

from cluster.state.commands import Command, Result, fail, ok
from cluster.state.model import FINISHED_PHASES, ControllerEpoch, Instance, Intent, State

CLAIM = "controller.claim"
KEEP_FINISHED = 64
# Commands that name an intent but come from the API, not from a controller: no epoch.
UNFENCED = frozenset({CLAIM, "intent.create", "intent.cancel"})


def fence(state: State, cmd: Command) -> Result | None:
    """Why ``cmd`` must be refused before its handler runs, or None.

    A command without ``epoch``, ``intent`` and ``from_phase`` passes untouched (the API's
    own commands)."""
    if cmd.type in UNFENCED:
        return None
    args = cmd.args
    if "epoch" in args:
        epoch, current = args["epoch"], state.controller
        if type(epoch) is not int or epoch != current.epoch:
            return fail(409, f"Stale controller epoch {epoch!r}: controllers run under epoch "
                             f"{current.epoch} (claimed by {current.member or 'nobody'})")
    elif "intent" in args or "from_phase" in args:
        return fail(400, "A controller's command must carry its epoch")
    if "intent" not in args and "from_phase" not in args:
        return None
    named = args.get("intent")
    intent = state.intents.get(named) if isinstance(named, str) else None
    if intent is None:
        return fail(404, f"Intent {args.get('intent')!r} not found")
    if intent.finished:
        return fail(409, f"Intent {intent.id} is already {intent.phase}")
    if "from_phase" in args and args["from_phase"] != intent.phase:
        return fail(409, f"Intent {intent.id} is in phase {intent.phase!r}, "
                         f"not {args['from_phase']!r}")
    return None


def lock_problem(inst: Instance, args: dict[str, Any]) -> str:
    """Why a change of ``inst`` is refused because an intent or a move holds it ("" if
    it is not). The holding intent's own commands (``args["intent"]``) pass."""
    mine = bool(inst.intent) and args.get("intent") == inst.intent
    if inst.intent and not mine:
        return f"Instance {inst.name} is held by intent {inst.intent}"
    if inst.moving_to and not mine:
        return f"Instance is being moved to {inst.moving_to}"
    return ""


def claim(state: State, cmd: Command) -> Result:
    member = cmd.args.get("member")
    if not isinstance(member, str) or not member:
        return fail(400, "A claim names the member that runs the controllers")
    state.controller = ControllerEpoch(member, state.controller.epoch + 1, cmd.time)
    return ok({"epoch": state.controller.epoch, "member": member})


def _dict_arg(args: dict[str, Any], key: str) -> dict[str, Any] | str:
    """A private deep copy of an object argument (the submitter's command may share its
    dicts with the caller on the member that submitted it), or why it is refused."""
    value = args.get(key, {})
    return copy.deepcopy(value) if isinstance(value, dict) else f"{key} must be an object"


def _lockable(state: State, locks: object, intent_id: str) -> dict[str, Instance] | str:
    """The instances ``locks`` (name -> uid) names, or why one cannot be held."""
    if not isinstance(locks, dict):
        return "locks must map instance names to uids"
    found: dict[str, Instance] = {}
    for name, uid in locks.items():
        inst = state.instances.get(name) if isinstance(name, str) else None
        if inst is None or inst.uid != uid:
            return f"Instance {name!r} not found"
        if inst.intent and inst.intent != intent_id:
            return f"Instance {name} is held by intent {inst.intent}"
        if inst.moving_to and inst.intent != intent_id:
            return f"Instance {name} is being moved to {inst.moving_to}"
        found[name] = inst
    return found


def _problem_code(problem: str) -> int:
    return 404 if problem.endswith("not found") else (
        409 if "held by" in problem or "being moved" in problem else 400)


def create(state: State, cmd: Command) -> Result:
    a = cmd.args
    intent_id, kind = a.get("intent"), a.get("kind")
    if not isinstance(intent_id, str) or not intent_id or not isinstance(kind, str) or not kind:
        return fail(400, "An intent needs an id and a kind")
    if intent_id in state.intents:
        return fail(409, f"Intent {intent_id} exists already")
    parts: dict[str, dict[str, Any]] = {}
    for key in ("request", "plan", "items"):
        value = _dict_arg(a, key)
        if isinstance(value, str):
            return fail(400, value)
        parts[key] = value
    phase = a.get("phase", "new")
    if not isinstance(phase, str) or not phase or phase in FINISHED_PHASES:
        return fail(400, f"Invalid first phase {phase!r}")
    held = _lockable(state, a.get("locks", {}), intent_id)
    if isinstance(held, str):
        return fail(_problem_code(held), held)
    intent = Intent(intent_id, kind, request=dict(parts["request"]), plan=dict(parts["plan"]),
                    phase=phase, items={k: dict(v) if isinstance(v, dict) else {"value": v}
                                        for k, v in parts["items"].items()},
                    locks={name: inst.uid for name, inst in held.items()},
                    member=str(a.get("member", "")), created_at=cmd.time, updated_at=cmd.time)
    for inst in held.values():
        inst.intent = intent_id
    state.intents[intent_id] = intent
    return ok({"intent": intent_id, "phase": phase})


def _merge_items(intent: Intent, items: dict[str, Any]) -> None:
    for key, value in items.items():
        update = value if isinstance(value, dict) else {"value": value}
        intent.items[key] = {**intent.items.get(key, {}), **update}


def advance(state: State, cmd: Command) -> Result:
    """The next phase (the fence has checked epoch and ``from_phase``)."""
    a = cmd.args
    if "from_phase" not in a:
        return fail(400, "An intent step names the phase it starts from")
    intent = state.intents[a["intent"]]
    phase = a.get("phase")
    if not isinstance(phase, str) or not phase or phase in FINISHED_PHASES:
        return fail(400, f"Invalid phase {phase!r} (finish an intent with intent.finish)")
    items, progress = _dict_arg(a, "items"), _dict_arg(a, "progress")
    plan = _dict_arg(a, "plan") if "plan" in a else None
    for value in (items, progress, plan):
        if isinstance(value, str):
            return fail(400, value)
    unlock = a.get("unlock", [])
    if not isinstance(unlock, list) or not all(isinstance(n, str) for n in unlock):
        return fail(400, "unlock must be a list of instance names")
    held = _lockable(state, a.get("lock", {}), intent.id)
    if isinstance(held, str):
        return fail(_problem_code(held), held)
    assert isinstance(items, dict) and isinstance(progress, dict)
    for name, inst in held.items():
        inst.intent, intent.locks[name] = intent.id, inst.uid
    _unlock(state, intent, unlock)
    if isinstance(plan, dict):
        intent.plan = dict(plan)
    _merge_items(intent, items)
    intent.progress.update(progress)
    if "cancellable" in a:
        intent.cancellable = bool(a["cancellable"])
    if "error" in a:
        intent.error = str(a["error"])
    intent.phase, intent.updated_at = phase, cmd.time
    return ok({"intent": intent.id, "phase": phase})


def progress(state: State, cmd: Command) -> Result:
    a = cmd.args
    if "intent" not in a:
        return fail(400, "Progress names its intent")
    intent = state.intents[a["intent"]]
    items, metadata = _dict_arg(a, "items"), _dict_arg(a, "progress")
    if isinstance(items, str) or isinstance(metadata, str):
        return fail(400, items if isinstance(items, str) else str(metadata))
    _merge_items(intent, items)
    intent.progress.update(metadata)
    intent.updated_at = cmd.time
    return ok({"intent": intent.id, "phase": intent.phase})


def cancel(state: State, cmd: Command) -> Result:
    intent = state.intents.get(cmd.args.get("intent", ""))
    if intent is None:
        return fail(404, "Intent not found")
    if intent.finished:
        return fail(409, f"Intent {intent.id} is already {intent.phase}")
    if not intent.cancellable:
        return fail(409, f"Intent {intent.id} can no longer be cancelled")
    intent.cancel, intent.updated_at = True, cmd.time
    return ok({"intent": intent.id, "phase": intent.phase})


def finish(state: State, cmd: Command) -> Result:
    a = cmd.args
    if "from_phase" not in a:
        return fail(400, "An intent step names the phase it starts from")
    status = a.get("status", "done")
    if status not in FINISHED_PHASES:
        return fail(400, f"An intent finishes as one of {', '.join(FINISHED_PHASES)}")
    intent = state.intents[a["intent"]]
    _unlock(state, intent, list(intent.locks))
    intent.phase, intent.updated_at = status, cmd.time
    if "error" in a:
        intent.error = str(a["error"])
    _forget_old(state)
    return ok({"intent": intent.id, "phase": status})


def _unlock(state: State, intent: Intent, names: list[str]) -> None:
    for name in names:
        uid = intent.locks.pop(name, None)
        inst = state.instances.get(name)
        if inst is not None and inst.uid == uid and inst.intent == intent.id:
            inst.intent = ""


def _forget_old(state: State) -> None:
    """Keep the newest ``KEEP_FINISHED`` finished intents (dicts keep creation order),
    and every child (``<parent>.<...>``) of an intent still running: a new leader that
    resumes a large evacuation finds its finished moves instead of starting them again."""
    running = {key for key, intent in state.intents.items() if not intent.finished}
    finished = [key for key, intent in state.intents.items()
                if intent.finished and key.split(".", 1)[0] not in running]
    for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
        del state.intents[key]


HANDLERS = {
    CLAIM: claim,
    "intent.create": create,
    "intent.advance": advance,
    "intent.progress": progress,
    "intent.cancel": cancel,
    "intent.finish": finish,
}
