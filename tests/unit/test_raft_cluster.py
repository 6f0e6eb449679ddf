"""Three RaftStores on loopback (real pysyncobj): a follower that fell behind a compacted
log catches up from the leader's dump with every acknowledged write, and neither the
seconds it spends installing the dump nor a follower's restart depose the leader."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cluster.state.commands import command
from cluster.state.model import State
from cluster.state.raft import RaftStore


def _addresses(count: int) -> list[str]:
    found = []
    for _ in range(count):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            found.append(f"127.0.0.1:{sock.getsockname()[1]}")
    return found


def _store(addresses: list[str], index: int, root: Path) -> RaftStore:
    others = [a for i, a in enumerate(addresses) if i != index]
    return RaftStore(addresses[index], others, root / f"m{index}", "test")


@asynccontextmanager
async def _cluster(root: Path) -> AsyncIterator[tuple[list[str], list[RaftStore]]]:
    addresses = _addresses(3)
    stores = [_store(addresses, i, root) for i in range(3)]
    try:
        await asyncio.gather(*(store.start() for store in stores))
        capacity = {"cpu": 64, "memory": 2.0**40, "disk": 2.0**40}
        await stores[0].submit(command(
            "cluster.bootstrap", member={"name": "m1", "capacity": capacity},
            pool={"name": "default", "driver": "dir"}, network={"name": "br0"}))
        yield addresses, stores
    finally:
        await asyncio.gather(*(store.close() for store in stores))


def _term(store: RaftStore) -> int:
    sync = store._require()
    return int(sync.getStatus()["raft_term"])


def _leader_index(stores: list[RaftStore]) -> int:
    leader = stores[0].leader()
    return next(i for i, store in enumerate(stores) if store.address == leader)


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _profiles(store: RaftStore) -> set[str]:
    with store.read() as state:
        return set(state.profiles)


def test_a_follower_behind_a_compacted_log_catches_up_from_the_dump(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _cluster(tmp_path) as (addresses, stores):
            await _until(lambda: len({s.leader() for s in stores}) == 1)
            leader = _leader_index(stores)
            lagging = (leader + 1) % 3
            await stores[lagging].close()
            acknowledged = [f"p{i}" for i in range(400)]
            for start in range(0, 400, 80):  # several log entries, so most get compacted
                await asyncio.gather(*(stores[leader].submit(command("profile.create", name=n))
                                       for n in acknowledged[start:start + 80]))
            for index in {0, 1, 2} - {lagging}:
                sync = stores[index]._require()
                first = sync.getStatus()["log_len"]
                sync.forceLogCompaction()
                await _until(lambda sync=sync, first=first: sync.getStatus()["log_len"] < first)
            assert (tmp_path / f"m{leader}" / "snapshot").exists()

            term = _term(stores[leader])
            stores[lagging] = _store(addresses, lagging, tmp_path)
            slow_install = stores[lagging]._install_state

            def install_for_3_s(state: State) -> None:
                """Longer than any election timeout; pysyncobj installs a dump while it
                reads messages, so the leader's next heartbeats wait in the socket."""
                time.sleep(3.0)
                slow_install(state)

            stores[lagging]._install_state = install_for_3_s  # type: ignore[method-assign]
            await stores[lagging].start()
            await _until(lambda: set(acknowledged) <= _profiles(stores[lagging]))
            assert (tmp_path / f"m{lagging}" / "snapshot").exists()  # installed, not replayed
            await stores[leader].submit(command("profile.create", name="after"))
            await _until(lambda: "after" in _profiles(stores[lagging]))
            await asyncio.sleep(1.0)
            assert _term(stores[leader]) == term  # the stalled member deposed nobody
            assert stores[lagging].leader() == stores[leader].address
            states: list[State] = []
            for store in stores:
                with store.read() as state:
                    states.append(state)
                    assert state.profiles == states[0].profiles
                    assert state.index == states[0].index

    asyncio.run(scenario())


def test_a_restarted_follower_deposes_no_leader(tmp_path: Path) -> None:
    """Peers with a higher address connect to a restarted member and retry only every
    connectionRetryTime: before the leader reconnected, a member that timed out would
    call an election with its stale log (this deposed the leader in 2 of 10 restarts)."""

    async def scenario() -> None:
        async with _cluster(tmp_path) as (addresses, stores):
            await _until(lambda: len({s.leader() for s in stores}) == 1)
            leader = _leader_index(stores)
            term = _term(stores[leader])
            for round in range(6):
                followers = sorted((i for i in range(3) if i != leader),
                                   key=lambda i: addresses[i])
                restarted = followers[round % 2]
                await stores[restarted].close()
                await stores[leader].submit(command("profile.create", name=f"p{round}"))
                await asyncio.sleep(0.3 * (round // 2))
                stores[restarted] = _store(addresses, restarted, tmp_path)
                await stores[restarted].start()
                await _until(lambda r=restarted, n=f"p{round}": n in _profiles(stores[r]))
            await asyncio.sleep(1.0)
            assert _term(stores[leader]) == term
            assert {store.leader() for store in stores} == {stores[leader].address}

    asyncio.run(scenario())


def test_entries_of_every_size_around_a_message_boundary_replicate(tmp_path: Path) -> None:
    """pysyncobj 0.3.17 sends an entry larger than ``appendEntriesBatchSizeBytes`` in
    chunks and marks the last one by the entry's data length instead of the pickled
    entry's: for sizes a few bytes under a chunk boundary the follower unpickles a
    truncated entry, and that follower is stuck for good. A plan of placements is such an
    entry; raft_conf raises the message size above any entry we write."""

    async def scenario() -> None:
        async with _cluster(tmp_path) as (addresses, stores):
            await _until(lambda: len({s.leader() for s in stores}) == 1)
            leader = _leader_index(stores)
            names = []
            for pad in range(2**17 - 600, 2**17):  # one entry each, across 128 KiB
                names.append(f"p{pad}")
                await stores[leader].submit(command("profile.create", name=names[-1],
                                                    description="x" * pad))
            for store in stores:
                await _until(lambda store=store: set(names) <= _profiles(store), 20.0)

    asyncio.run(scenario())
