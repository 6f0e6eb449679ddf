"""The leader-only loop that commits members' liveness transitions.

Like ``voters.keep_voters`` it looks every ``period`` whether this member leads Raft and
works only then. Each leadership starts a fresh ``LivenessTracker`` (every member gets a
threshold of grace on this leader's clock), so a new leader never demotes members on
deadlines another leader kept. It reads the heartbeat counts from its replica, which
is how it hears the applied heartbeats, and submits only transitions. Acting on "I think I
lead" alone is harmless: apply re-checks each transition against the heartbeat count, and
a deposed leader's commands either fail to commit or are refused as stale.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cluster.liveness.tracker import Committed, LivenessTracker, Transition
from cluster.state.apply_members import offline_threshold
from cluster.state.commands import command
from cluster.state.model import State
from cluster.state.raft import RaftStore

log = logging.getLogger(__name__)
PERIOD = 0.25  # seconds between looks: the most an OFFLINE verdict comes late by
SUBMIT_TIMEOUT = 2.0


def committed_liveness(state: State) -> dict[str, Committed]:
    """Every member's committed liveness and heartbeat counts (O(members))."""
    return {m.name: Committed(m.liveness, m.beats, m.liveness_beats)
            for m in state.members.values()}


def leads(store: RaftStore) -> bool:
    return store.voter and store.leader() == store.address


async def judge_liveness(store: RaftStore, period: float = PERIOD) -> None:
    """Forever: while this member leads, commit liveness transitions."""
    while True:
        await asyncio.sleep(period)
        if leads(store):
            try:
                await _lead(store, period)
            except Exception:  # noqa: BLE001 - logged; the next leadership check starts over
                log.exception("liveness loop failed; starting over")


async def _lead(store: RaftStore, period: float) -> None:
    with store.read() as state:
        tracker = LivenessTracker(time.monotonic, offline_threshold(state))
        tracker.start(committed_liveness(state))
    log.info("leading: judging liveness with %g s of grace", tracker.threshold)
    while leads(store):
        with store.read() as state:
            tracker.threshold = offline_threshold(state)
            changes = tracker.transitions(committed_liveness(state))
        if changes:
            await asyncio.gather(*(_commit(store, change, tracker.threshold)
                                   for change in changes))
        await asyncio.sleep(period)


async def _commit(store: RaftStore, change: Transition, threshold: float) -> None:
    try:
        await store.submit(command("member.liveness", name=change.name, status=change.status,
                                   beats=change.beats), timeout=SUBMIT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - stale or not committed: judged again next look
        log.info("liveness of %s not changed to %s: %s", change.name, change.status, exc)
        return
    if change.status == "OFFLINE":
        log.warning("member %s is OFFLINE: no heartbeat for over %g s on the leader's clock",
                    change.name, threshold)
    else:
        log.warning("member %s is ONLINE again", change.name)
