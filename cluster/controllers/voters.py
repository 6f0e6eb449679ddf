"""The controller that keeps Raft's voters in line with the members' ``database`` role.

On the leader: replace voters offline past the threshold by online followers (so the
quorum keeps its configured size), then bring Raft's own configuration in line with the
roles. A witness is never swapped out or in (``plan_promotions``): it always votes.
The role changes carry the lease's epoch; Raft's configuration changes can only be made
by the leader anyway. (Each member switching itself between voter and follower
is not leader work: ``cluster.membership.raft_role.track_partners``.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cluster.controllers.runtime import Lease
from cluster.state.apply_members import VOTER, plan_promotions, raft_drift
from cluster.state.raft import RaftStore

log = logging.getLogger(__name__)
PERIOD = 2.5
CHANGE_TIMEOUT = 60.0


async def add_voter(store: RaftStore, raft: str) -> None:
    try:
        await store.add_member(raft, timeout=CHANGE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - logged; the leader's next round retries
        log.warning("adding %s to Raft failed: %s", raft, exc)


async def remove_voter(store: RaftStore, raft: str) -> None:
    try:
        await store.remove_member(raft, timeout=CHANGE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - logged; the leader's next round retries
        log.warning("removing %s from Raft failed: %s", raft, exc)


class VotersController:
    name = "voters"

    def __init__(self, period: float = PERIOD) -> None:
        self.period = period

    async def run(self, lease: Lease) -> None:
        """Until cancelled: every ``period``, promote and follow the roles in Raft."""
        while True:
            await asyncio.sleep(self.period)
            with lease.store.read() as state:
                swaps = plan_promotions(state)
            for lost, follower in swaps:
                try:
                    await lease.submit("member.roles", name=lost, roles=[])
                    await lease.submit("member.roles", name=follower, roles=[VOTER])
                except Exception as exc:  # noqa: BLE001 - state changed meanwhile; next round
                    log.info("promotion of %s skipped: %s", follower, exc)
                    continue
                log.info("voter %s is offline: promoting %s", lost, follower)
            await follow_roles_in_raft(lease.store, lease.holds)


async def follow_roles_in_raft(store: RaftStore, holds: Callable[[], bool]) -> None:
    """Add the missing voters first (the quorum only grows while a vote moves), then
    remove the extra ones; each change commits before the next starts.

    A change of Raft's configuration is a side effect no epoch fences, so each is made
    only while ``holds()`` (this member still leads under the lease's epoch). A member
    that was its own leader before it joined a cluster still ran this for a moment after
    its store was rebound to the cluster, with a replica still empty: it read every
    partner as extra and asked Raft to remove them."""
    if not holds() or not store.replica_loaded:
        return
    with store.read() as state:
        to_add, to_remove = raft_drift(state, store.address, store.raft_partners())
    for raft in to_add:
        if not holds():
            return
        await add_voter(store, raft)
    for raft in to_remove:
        if not holds():
            return
        await remove_voter(store, raft)
