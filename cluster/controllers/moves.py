"""The controller of cold moves (intents of kind ``move``), on the Raft leader.

A cold move of ``name`` from ``source`` to ``target``: pre-copy a running container's
volume -> stop it (statefully with ``migration.stateful``: its CRIU checkpoint travels in
the volume) -> ``instance.move_begin`` (apply re-checks the target and reserves there) ->
the target pulls the volume (or what changed since the pre-copy) from the source ->
``instance.move_end`` (the switch) -> start it on the target while the source drops its
copy. The phases and the resume rule are in ``move_phases``: a failure, a cancel, or a
new leader finding the move half-way before the switch undoes it (the target drops what
it received, the reservation is freed, the instance runs again on the source if it ran);
after the switch the move only rolls forward. Every step is safe to repeat.

The API commits the intent (``handlers/instances.py``); its operation is rendered from
the replica on any member (``api/intent_ops.py``). A move of a running instance that one
leader carried out whole records its downtime, from asking the source to stop it to the
target reporting it running (``corral_move_downtime_seconds{kind="move"}``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from cluster.controllers import transfer
from cluster.controllers.control_metrics import ControlMetrics
from cluster.controllers.intents import (
    IntentController,
    MoveCancelled,
    Throttled,
    agent_step,
    check_cancel,
    read_intent,
    until_cancelled,
)
from cluster.controllers.move_phases import INTERRUPTED, decide
from cluster.controllers.runtime import Lease
from cluster.state.errors import BadRequest
from cluster.state.model import Intent

log = logging.getLogger(__name__)
STOP_TIMEOUT = 30
START_WAIT = 120.0  # for the agent to report a start (a dead member never does)


class MovesController(IntentController):
    name = "moves"
    kinds = frozenset({"move"})

    async def drive(self, lease: Lease, intent_id: str, resumed: bool) -> None:
        intent = read_intent(lease, intent_id)
        if intent is None:
            return
        what = decision_of(lease, intent, resumed)
        if what == "none":
            return
        if what == "forward":
            await roll_forward(lease, intent)
        elif what == "undo":
            await undo(lease, intent, "Operation cancelled" if intent.cancel else
                       f"The move was {INTERRUPTED} and was undone",
                       cancelled=intent.cancel)
        else:
            await _run(lease, intent, self.metrics)


def decision_of(lease: Lease, intent: Intent, resumed: bool) -> str:
    req = intent.request
    with lease.store.read() as state:
        inst = state.instances.get(req["name"])
        location = inst.location if inst is not None and inst.uid == req["uid"] else ""
        moving_to = inst.moving_to if inst is not None and inst.uid == req["uid"] else ""
    return decide(intent.phase, cancel=intent.cancel, finished=intent.finished,
                  location=location, moving_to=moving_to, source=req["source"],
                  target=req["target"], resumed=resumed)


async def _advance(lease: Lease, intent: Intent, phase: str, **extra: Any) -> None:
    await lease.submit("intent.advance", intent=intent.id, from_phase=intent.phase,
                       phase=phase, **extra)
    intent.phase = phase


def progress_reporter(lease: Lease, intent: Intent) -> tuple[Throttled, Any]:
    """A throttled ``intent.progress`` and the callback a transfer calls with bytes."""
    throttled = Throttled(lease, intent.id)
    started = time.monotonic()

    def progress(done: int) -> None:
        rate = done / max(time.monotonic() - started, 1e-3)
        throttled(fs_progress=f"{done / 1e6:.1f}MB ({rate / 1e6:.1f}MB/s)",
                  bytes_transferred=done)

    return throttled, progress


async def _run(lease: Lease, intent: Intent, metrics: ControlMetrics) -> None:
    req = intent.request
    name, uid, target = req["name"], req["uid"], req["target"]
    was_running, stateful = bool(req["was_running"]), bool(req["stateful"])
    source_address, target_address = transfer.addresses(lease, req["source"], target)
    laps = [time.monotonic()]
    precopy: asyncio.Future[float | None] | None = None
    throttled, progress = progress_reporter(lease, intent)
    try:
        await _advance(lease, intent, "precopy")
        if req.get("type") == "container" and was_running:
            precopy = asyncio.ensure_future(transfer.precopy(
                lease, name, uid, source_address, target_address))
            if stateful:
                await asyncio.wait([precopy])
        check_cancel(lease, intent.id)
        await _advance(lease, intent, "stopping")
        stopped_at = time.monotonic()
        if was_running:
            await agent_step(lease, uid, "instance.action", name=name, action="stop",
                             force=False, timeout=STOP_TIMEOUT, stateful=stateful,
                             intent=intent.id)
        since = await precopy if precopy is not None else None
        laps.append(time.monotonic())
        check_cancel(lease, intent.id)
        await lease.submit("instance.move_begin", name=name, uid=uid, target=target,
                           requested=req.get("requested") or target, intent=intent.id,
                           from_phase="stopping")
        await _advance(lease, intent, "begun")
        await until_cancelled(lease, intent.id, transfer.pull(
            lease, name, uid, source_address, target_address, progress, since))
        await throttled.flush()
        await _advance(lease, intent, "ending", cancellable=False)
        await lease.submit("instance.move_end", name=name, uid=uid, target=target,
                           origin=req.get("origin"), intent=intent.id, from_phase="ending")
        laps.append(time.monotonic())
    except asyncio.CancelledError:
        raise  # the lease ended: the next leader resumes (and undoes) this move
    except Exception as exc:  # noqa: BLE001 - undone; the operation reports why
        if precopy is not None:
            await asyncio.gather(precopy, return_exceptions=True)
        log.warning("moving %s to %s failed: %s", name, target, exc)
        await undo(lease, intent, str(exc) or type(exc).__name__,
                   cancelled=isinstance(exc, MoveCancelled))
        return
    ran_at = await roll_forward(lease, intent)
    laps.append(time.monotonic())
    if was_running and ran_at is not None:
        metrics.move_downtime("move", ran_at - stopped_at)
    log.info("moved %s from %s to %s in %.2f s (stop %.2f, copy %.2f, start and drop %.2f)",
             name, req["source"], target, laps[-1] - laps[0],
             *(b - a for a, b in zip(laps, laps[1:], strict=False)))


async def ensure_running(lease: Lease, intent: Intent, stateful: bool) -> None:
    """Have the instance run where it lives, once: if a start was committed already (a
    previous leader's), wait for the agent to have carried it out instead of starting
    again. A checkpoint that does not restore (CRIU, kernel) is dropped and the
    container boots afresh: running without its old processes beats not running."""
    name, uid = intent.request["name"], intent.request["uid"]
    queue = lease.store.subscribe()
    try:
        with lease.store.read() as state:
            inst = state.instances.get(name)
            if inst is None or inst.uid != uid:
                return
            power, generation = inst.power, inst.generation
            stateful = stateful and inst.stateful
        if power in ("Running", "Frozen"):
            await lease.wait_generation(queue, uid, generation, START_WAIT)
            return
    finally:
        lease.store.unsubscribe(queue)
    try:
        await agent_step(lease, uid, "instance.action", name=name, action="start",
                         wait=START_WAIT, stateful=stateful, intent=intent.id)
    except BadRequest as exc:
        if not stateful:
            raise
        log.warning("%s did not restore from its checkpoint (%s); booting it afresh",
                    name, exc)
        await agent_step(lease, uid, "instance.action", name=name, action="start",
                         wait=START_WAIT, intent=intent.id)


async def roll_forward(lease: Lease, intent: Intent) -> float | None:
    """After the switch: run the instance on the target if it ran, drop the source's
    copy, and finish. Safe to repeat. Returns when (``time.monotonic()``) the target
    reported it running, None if it was not to run or did not start."""
    req = intent.request
    if intent.phase != "switched":
        await _advance(lease, intent, "switched", cancellable=False)
    (source_address,) = transfer.addresses(lease, req["source"])
    start = (_timed(ensure_running(lease, intent, bool(req["stateful"])))
             if req["was_running"] else asyncio.sleep(0))
    results = await asyncio.gather(
        transfer.drop_copy(lease, req["name"], req["uid"], source_address), start,
        return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    extra: dict[str, Any] = {"error": f"moved, but it did not start: {failed[0]}"} if failed else {}
    await lease.submit("intent.finish", intent=intent.id, from_phase=intent.phase,
                       status="done", **extra)
    ran_at = results[1]
    return ran_at if isinstance(ran_at, float) and not failed else None


async def _timed(work: Awaitable[None]) -> float:
    """Await ``work``; when it ended."""
    await work
    return time.monotonic()


async def undo(lease: Lease, intent: Intent, error: str, cancelled: bool = False) -> None:
    """Before the switch: the target drops what it received, its reservation is freed,
    and the instance runs again on the source if it ran. Safe to repeat."""
    req = intent.request
    try:
        (target_address,) = transfer.addresses(lease, req["target"])
        await transfer.drop_copy(lease, req["name"], req["uid"], target_address,
                                 incoming=True)
    except transfer.TransferFailed as exc:
        log.warning("undoing the move of %s: %s", req["name"], exc)
    await lease.submit("instance.move_abort", name=req["name"], uid=req["uid"],
                       intent=intent.id)
    if req["was_running"]:
        await ensure_running(lease, intent, bool(req["stateful"]))
    await lease.submit("intent.finish", intent=intent.id, from_phase=intent.phase,
                       status="cancelled" if cancelled else "failed", error=error)
