"""The controller of live VM moves (intents of kind ``live_move``), on the Raft leader
(the halves run on the two members: ``cluster/api/handlers/migration.py``).

``begun`` (``instance.move_begin`` with ``live``: apply re-checks the target and
reserves there) -> ``prepared`` (the target starts a paused QEMU waiting for the VM and
exports its new disk over NBD) -> ``sending`` (the source mirrors its disk there, then
migrates RAM and pauses) -> ``ending`` (``move_end``: the VM lives on the target) ->
``switched`` (the target runs the guest, the source quits its QEMU and deletes its files).
The guest's pause, as QEMU measured it, is ``corral_move_downtime_seconds{kind="live_move"}``.

Until ``move_end`` commits, a failure, a cancel or a new leader undoes it: the target's
incoming QEMU is killed first (so a ``migrate_out`` the source may still be running for a
dead leader fails and resumes the guest itself), then the source is told to resume
(which does nothing if the guest runs) and the target's reservation is freed. The VM
keeps running on its source.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cluster.controllers import transfer
from cluster.controllers.control_metrics import ControlMetrics
from cluster.controllers.intents import (
    IntentController,
    MoveCancelled,
    check_cancel,
    read_intent,
    until_cancelled,
)
from cluster.controllers.move_phases import INTERRUPTED
from cluster.controllers.moves import _advance, decision_of, progress_reporter
from cluster.controllers.runtime import Lease
from cluster.state.model import Intent

log = logging.getLogger(__name__)
RESUME_TRIES = 5


class LiveMovesController(IntentController):
    name = "live-moves"
    kinds = frozenset({"live_move"})

    async def drive(self, lease: Lease, intent_id: str, resumed: bool) -> None:
        intent = read_intent(lease, intent_id)
        if intent is None:
            return
        what = decision_of(lease, intent, resumed)
        if what == "forward":
            await roll_forward(lease, intent)
        elif what == "undo":
            await undo(lease, intent, "Operation cancelled" if intent.cancel else
                       f"The live migration was {INTERRUPTED}; the VM runs on its "
                       "source", cancelled=intent.cancel)
        elif what == "run":
            await _run(lease, intent, self.metrics)


async def _run(lease: Lease, intent: Intent, metrics: ControlMetrics) -> None:
    req = intent.request
    name, uid, target = req["name"], req["uid"], req["target"]
    source_address, target_address = transfer.addresses(lease, req["source"], target)
    throttled, progress = progress_reporter(lease, intent)
    try:
        await _advance(lease, intent, "begun")
        await lease.submit("instance.move_begin", name=name, uid=uid, target=target,
                           requested=req.get("requested") or target, live=True,
                           intent=intent.id, from_phase="begun")
        doc = await transfer.migration_call(lease, "POST", target_address, name, uid,
                                            "incoming")
        incoming = doc["metadata"]["incoming"]
        check_cancel(lease, intent.id)
        await _advance(lease, intent, "sending")
        stats = await until_cancelled(lease, intent.id, transfer.send(
            lease, source_address, name, uid,
            {"incoming": incoming, "downtime_ms": req.get("downtime_ms")}, progress))
        await throttled.flush()
        await _advance(lease, intent, "ending", cancellable=False,
                       progress={"live_migration": stats})
        await lease.submit("instance.move_end", name=name, uid=uid, target=target,
                           origin=req.get("origin"), intent=intent.id, from_phase="ending")
    except asyncio.CancelledError:
        raise  # the lease ended: the next leader resumes (and undoes) this move
    except Exception as exc:  # noqa: BLE001 - undone; the operation reports why
        log.warning("live migration of %s to %s failed: %s", name, target, exc)
        await undo(lease, intent, str(exc) or type(exc).__name__,
                   cancelled=isinstance(exc, MoveCancelled))
        return
    log.info("live-migrated %s to %s in %s ms (downtime %s ms)", name, target,
             stats.get("total_ms"), stats.get("downtime_ms"))
    downtime_ms = stats.get("downtime_ms")
    if isinstance(downtime_ms, int | float):  # QEMU's own measure of the guest's pause
        metrics.move_downtime("live_move", downtime_ms / 1000)
    await roll_forward(lease, intent)


async def roll_forward(lease: Lease, intent: Intent) -> None:
    """After the switch: the target runs the guest, the source drops its QEMU."""
    req = intent.request
    if intent.phase != "switched":
        await _advance(lease, intent, "switched", cancellable=False)
    source_address, target_address = transfer.addresses(lease, req["source"], req["target"])
    extra: dict[str, Any] = {}
    if not await transfer.quietly(lease, "POST", target_address, req["name"], req["uid"],
                                  "incoming/finish"):
        extra["error"] = "moved, but the target did not confirm it runs the guest"
    await transfer.quietly(lease, "DELETE", source_address, req["name"], req["uid"],
                           "outgoing")
    await lease.submit("intent.finish", intent=intent.id, from_phase=intent.phase,
                       status="done", **extra)


async def undo(lease: Lease, intent: Intent, error: str, cancelled: bool = False) -> None:
    """Before the switch: kill the target's incoming QEMU, resume the guest on the
    source (a no-op if it runs), free the target. Safe to repeat."""
    req = intent.request
    source_address, target_address = transfer.addresses(lease, req["source"], req["target"])
    await transfer.quietly(lease, "DELETE", target_address, req["name"], req["uid"],
                           "incoming")
    for attempt in range(RESUME_TRIES):
        if await transfer.quietly(lease, "POST", source_address, req["name"], req["uid"],
                                  "outgoing/resume"):
            break
        await asyncio.sleep(1.0 + attempt)
    await lease.submit("instance.move_abort", name=req["name"], uid=req["uid"],
                       intent=intent.id)
    await lease.submit("intent.finish", intent=intent.id, from_phase=intent.phase,
                       status="cancelled" if cancelled else "failed", error=error)
