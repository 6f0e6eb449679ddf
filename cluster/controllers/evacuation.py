"""The controller of evacuations and restores (intents of kind ``evacuate`` and
``restore``), on the Raft leader.

Evacuate ``member``: commit it EVACUATED (the scheduler places nothing new there), then
handle each of its instances by its ``cluster.evacuate`` (or the request's mode):
``auto``, ``migrate`` and ``live-migrate`` move it (each move a child intent, driven by
the move controllers) to a member the scheduler picks, recording
``volatile.evacuate.origin`` (``auto`` and ``live-migrate`` keep a running VM running and
a stateful container its processes; ``migrate`` moves cold); ``stop`` stops it there.
Restore: commit the member ONLINE, move the instances whose origin it is back, then start
the ones the evacuation stopped. Up to ``PARALLEL`` instances are handled at a time.

Each instance is an item of the intent (``items[name]``) with its state (todo, moving,
done, failed), its current child move and the members that failed it. A child move that
failed (and was undone) is tried again, away from the members that failed it (a move
that a leader change interrupted blames no member), ``ATTEMPTS`` times in all; a child's id
names its parent, the instance and the attempt, so a new leader that finds a child it
had not recorded yet adopts it rather than creating a second one. When every item is
done or failed the intent finishes: done, or failed with ``N instance(s) could not be
handled`` (the member stays EVACUATED; nothing is moved back).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from cluster.controllers.control_metrics import PlaceFn
from cluster.controllers.intents import IntentController, agent_step, read_intent
from cluster.controllers.move_phases import INTERRUPTED
from cluster.controllers.move_request import MoveRefused, move_request
from cluster.controllers.planning import plan_targets
from cluster.controllers.runtime import Lease
from cluster.state.errors import StateError
from cluster.state.model import Intent

log = logging.getLogger(__name__)
ORIGIN = "volatile.evacuate.origin"
STOPPED = "volatile.evacuate.stopped"
PARALLEL = 8
ATTEMPTS = 4
POLL = 0.5
Step = Literal["create", "wait", "done", "retry", "fail"]


def child_id(parent: str, name: str, attempt: int) -> str:
    return f"{parent}.{name}.{attempt}"


def item_step(item: dict[str, Any], child_phase: str | None) -> Step:
    """What to do next with a move item, given its current child's phase (None if that
    child does not exist): create the child, wait for it, or settle the item."""
    if item.get("state") in ("done", "failed"):
        return "done" if item["state"] == "done" else "fail"
    if child_phase is None:
        return "create"
    if child_phase == "done":
        return "done"
    if child_phase in ("failed", "cancelled"):
        return "retry" if int(item.get("attempts", 1)) < ATTEMPTS else "fail"
    return "wait"


def plan_items(intent: Intent, instances: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    """The items of a new evacuation or restore from ``(name, location, power, config
    how)`` of the instances involved."""
    member, mode = intent.request["member"], intent.request.get("mode", "")
    items: dict[str, Any] = {}
    for name, _location, power, how in instances:
        if intent.kind == "evacuate":
            items[name] = {"how": mode or how or "auto", "power": power, "state": "todo",
                           "attempts": 0, "avoid": [member]}
        else:
            items[name] = {"how": "back" if _location != member else "start",
                           "power": power, "state": "todo", "attempts": 0, "avoid": []}
    return items


def summary(items: dict[str, Any]) -> str:
    settled = sum(1 for i in items.values() if i.get("state") in ("done", "failed"))
    return f"{settled}/{len(items)} instances"


class EvacuationController(IntentController):
    name = "evacuation"
    kinds = frozenset({"evacuate", "restore"})

    async def drive(self, lease: Lease, intent_id: str, resumed: bool) -> None:
        intent = read_intent(lease, intent_id)
        if intent is None or intent.finished:
            return
        if intent.phase == "new":
            await _start(lease, intent)
        await _handle_items(lease, intent, self.metrics.place)


async def _start(lease: Lease, intent: Intent) -> None:
    member = intent.request["member"]
    evacuate = intent.kind == "evacuate"
    await lease.submit("member.set_state", name=member,
                       state="EVACUATED" if evacuate else "ONLINE", intent=intent.id,
                       from_phase="new")
    with lease.store.read() as state:
        if evacuate:
            found = [(i.name, i.location, i.power, i.config.get("cluster.evacuate", ""))
                     for i in state.instances.values() if i.location == member]
        else:
            found = [(i.name, i.location, i.power, "") for i in state.instances.values()
                     if (i.config.get(ORIGIN) == member and i.location != member)
                     or (i.location == member and i.config.get(STOPPED) == "true")]
    items = plan_items(intent, sorted(found))
    await lease.submit("intent.advance", intent=intent.id, from_phase="new", phase="moving",
                       items=items, progress={"evacuate_progress": summary(items)})
    intent.phase, intent.items = "moving", items


async def _handle_items(lease: Lease, intent: Intent, place: PlaceFn) -> None:
    gate = asyncio.Semaphore(PARALLEL)
    moves = [n for n, i in intent.items.items() if i["how"] not in ("stop", "start")]
    await asyncio.gather(*(_one(lease, intent, name, gate, place) for name in moves))
    for name in [n for n, i in intent.items.items() if i["how"] in ("stop", "start")]:
        await _one(lease, intent, name, gate, place)  # stops and restarts: one by one
    failed = {n: i for n, i in intent.items.items() if i.get("state") == "failed"}
    extra: dict[str, Any] = {}
    if failed:
        first = next(iter(failed.values())).get("error", "")
        extra = {"error": f"{len(failed)} instance(s) could not be handled: {first}"}
    await lease.submit("intent.finish", intent=intent.id, from_phase="moving",
                       status="failed" if failed else "done", **extra)


async def _settle(lease: Lease, intent: Intent, name: str, **update: Any) -> None:
    intent.items[name] = {**intent.items[name], **update}
    await lease.submit("intent.progress", intent=intent.id, from_phase="moving",
                       items={name: update},
                       progress={"evacuate_progress": summary(intent.items)})


async def _one(lease: Lease, intent: Intent, name: str, gate: asyncio.Semaphore,
               place: PlaceFn) -> None:
    item = intent.items[name]
    if item.get("state") in ("done", "failed"):
        return
    async with gate:
        try:
            if item["how"] == "stop":
                await _stop_there(lease, intent, name)
            elif item["how"] == "start":
                await _start_again(lease, intent, name)
            else:
                await _move(lease, intent, name, place)
                return
        except StateError as exc:
            await _settle(lease, intent, name, state="failed", error=str(exc))
            return
        await _settle(lease, intent, name, state="done")


async def _stop_there(lease: Lease, intent: Intent, name: str) -> None:
    if intent.items[name].get("power") not in ("Running", "Frozen"):
        return
    with lease.store.read() as state:
        inst = state.instances.get(name)
        uid = inst.uid if inst is not None else ""
    await lease.submit("instance.patch", name=name, config={STOPPED: "true"})
    await agent_step(lease, uid, "instance.action", name=name, action="stop",
                     force=False, timeout=30)


async def _start_again(lease: Lease, intent: Intent, name: str) -> None:
    with lease.store.read() as state:
        inst = state.instances.get(name)
        uid = inst.uid if inst is not None else ""
    await lease.submit("instance.patch", name=name, config={STOPPED: "false"})
    await agent_step(lease, uid, "instance.action", name=name, action="start")


def _child_phase(lease: Lease, child: str) -> tuple[str | None, str, str]:
    with lease.store.read() as state:
        found = state.intents.get(child)
        if found is None:
            return None, "", ""
        return found.phase, found.error, str(found.request.get("target", ""))


async def _move(lease: Lease, intent: Intent, name: str, place: PlaceFn) -> None:
    """Drive one instance's child moves until one is done or ``ATTEMPTS`` failed."""
    member = intent.request["member"]
    while True:
        item = intent.items[name]
        attempt = max(1, int(item.get("attempts", 0)))
        child = child_id(intent.id, name, attempt)
        phase, error, target = _child_phase(lease, child)
        step = item_step({**item, "attempts": attempt}, phase)
        if step == "done":
            await _settle(lease, intent, name, state="done", child=child)
            return
        if step == "fail":
            await _settle(lease, intent, name, state="failed", child=child,
                          error=error or "the move failed")
            return
        if step == "retry":
            # A move a leader change interrupted says nothing against its target.
            blamed = "" if INTERRUPTED in error else target
            avoid = sorted({*item.get("avoid", []), blamed} - {""})
            log.info("evacuation %s: moving %s failed (%s); trying elsewhere", intent.id,
                     name, error)
            await _settle(lease, intent, name, attempts=attempt + 1, avoid=avoid,
                          last_error=error)
            await asyncio.sleep(POLL)
            continue
        if step == "create":
            problem = await _create_child(lease, intent, name, child, member, item, place)
            if problem:
                if attempt >= ATTEMPTS:
                    await _settle(lease, intent, name, state="failed", error=problem)
                    return
                await _settle(lease, intent, name, attempts=attempt + 1, last_error=problem)
                await asyncio.sleep(POLL)
                continue
            if item.get("state") != "moving" or item.get("child") != child:
                await _settle(lease, intent, name, state="moving", child=child,
                              attempts=attempt)
        await asyncio.sleep(POLL)


async def _create_child(lease: Lease, intent: Intent, name: str, child: str, member: str,
                        item: dict[str, Any], place: PlaceFn) -> str:
    """Create the child move; why it could not be created ("" when it was, or when it
    exists already: a previous leader created it)."""
    with lease.store.read() as state:
        try:
            if intent.kind == "evacuate":
                (target, why), = plan_targets(state, [name],
                                              {name: list(item.get("avoid", [member]))},
                                              place).values()
                if not target:
                    return why
                kind, request = move_request(state, name, target, origin=member,
                                             live=item.get("how") != "migrate",
                                             parent=intent.id)
            else:
                kind, request = move_request(state, name, member, requested=member,
                                             origin="", parent=intent.id)
        except MoveRefused as exc:
            return str(exc)
    try:
        await lease.submit("intent.create", intent=child, kind=kind, request=request,
                           locks={name: request["uid"]}, member=lease.member)
    except StateError as exc:
        if getattr(exc, "code", 0) == 409 and "exists already" in str(exc):
            return ""
        return str(exc)
    return ""
