"""Pre-vote and check-quorum on three RaftStores on loopback (real pysyncobj): messages
between the two sides of a partition are dropped at each store's transport (the TCP
connections stay up, as they do when a firewall drops packets, so every election
timer that fires really sends its requests).

- A follower cut off for 3 s (its timer fires several times) comes back without an
  election: same leader, same term everywhere.
- A leader cut off steps down within 2 x raftMaxTimeout while the other two elect a
  leader and commit; once healed, it follows the new leader.
The tests in tests/cluster/test_leadership.py do the same with real partitions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.state.commands import command
from cluster.state.raft import RaftStore
from tests.unit.test_raft_cluster import _cluster, _leader_index, _term, _until

MAX_TIMEOUT = 1.0  # raft_conf's raftMaxTimeout


@contextmanager
def _partition(stores: list[RaftStore], cut: set[int]) -> Iterator[None]:
    """Drop every Raft message between the stores in ``cut`` and the others."""
    addresses = {stores[i].address for i in cut}
    transports = []
    for index, store in enumerate(stores):
        transport = store._require()._SyncObj__transport
        inside = index in cut

        def send(node: Any, message: Any, _inside: bool = inside,
                 _send: Any = transport.send) -> Any:
            if (str(node.id) in addresses) != _inside:
                return None
            return _send(node, message)

        transport.send = send
        transports.append(transport)
    try:
        yield
    finally:
        for transport in transports:
            del transport.send


def _views(stores: list[RaftStore]) -> list[tuple[str | None, int]]:
    return [(store.leader(), _term(store)) for store in stores]


def test_a_follower_back_from_a_partition_does_not_change_leader_or_term(
        tmp_path: Path) -> None:
    async def run() -> None:
        async with _cluster(tmp_path) as (_, stores):
            await _until(lambda: len(set(_views(stores))) == 1)
            leader = _leader_index(stores)
            follower = (leader + 1) % 3
            before = _views(stores)[leader]
            rounds = stores[follower].raft_status()["pre_vote_rounds"]
            with _partition(stores, {follower}):
                await asyncio.sleep(3.0)  # its timer fires 3-5 times
                assert stores[follower].leader() is None  # it noticed
            assert stores[follower].raft_status()["pre_vote_rounds"] >= rounds + 2
            await _until(lambda: stores[follower].leader() is not None, 5)
            watched = time.monotonic() + 3.0
            while time.monotonic() < watched:
                assert _views(stores) == [before] * 3, (before, _views(stores))
                await asyncio.sleep(0.05)
            await stores[follower].submit(command("member.heartbeat", name="m1"), timeout=5)

    asyncio.run(run())


def test_an_isolated_leader_steps_down_and_the_majority_carries_on(tmp_path: Path) -> None:
    async def run() -> None:
        async with _cluster(tmp_path) as (_, stores):
            await _until(lambda: len(set(_views(stores))) == 1)
            leader = _leader_index(stores)
            term = _term(stores[leader])
            rest = [s for i, s in enumerate(stores) if i != leader]
            with _partition(stores, {leader}):
                cut = time.monotonic()
                await _until(lambda: stores[leader].leader() is None, 2 * MAX_TIMEOUT + 1)
                stepped_down = time.monotonic() - cut
                assert stepped_down <= 2 * MAX_TIMEOUT + 0.5, stepped_down
                assert not stores[leader]._require()._isLeader()
                await rest[0].submit(command("member.heartbeat", name="m1"), timeout=10)
                new = rest[0].leader()
                assert new in {s.address for s in rest} and _term(rest[0]) > term
                # Cut off, it raised no term of its own (pre-vote): nothing to disrupt.
                assert _term(stores[leader]) == term
            await _until(lambda: stores[leader].leader() == new, 5)
            assert _term(stores[leader]) == _term(rest[0])

    asyncio.run(run())
