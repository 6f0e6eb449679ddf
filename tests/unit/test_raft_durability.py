"""RaftStore over the durable journal, real pysyncobj on loopback: a damaged journal is
never served (a lone member refuses to start, a follower rebuilds from the leader with
every acknowledged write), and no entry is acknowledged before an fdatasync covers it."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from cluster.state.commands import command
from cluster.state.errors import ReplicaDamaged
from cluster.state.raft import RaftStore

BOOTSTRAP = command("cluster.bootstrap",
                    member={"name": "m1", "capacity": {"cpu": 64, "memory": 2.0**40,
                                                       "disk": 2.0**40}},
                    pool={"name": "default", "driver": "dir"}, network={"name": "br0"})


def _addresses(count: int) -> list[str]:
    found = []
    for _ in range(count):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            found.append(f"127.0.0.1:{sock.getsockname()[1]}")
    return found


def _store(addresses: list[str], index: int, root: Path) -> RaftStore:
    return RaftStore(addresses[index], [a for a in addresses if a != addresses[index]],
                     root / f"m{index}", "test")


def _damage(journal: Path) -> None:
    """Overwrite 4 KiB in the middle, as the reproduction in issue 13 did."""
    middle = journal.stat().st_size // 2
    with open(journal, "r+b") as out:
        out.seek(middle)
        out.write(b"\xa5" * 4096)


def _profiles(store: RaftStore) -> set[str]:
    with store.read() as state:
        return set(state.profiles)


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _leader(stores: list[RaftStore]) -> RaftStore:
    return next(s for s in stores if s.leader() == s.address)


def test_a_lone_member_with_a_damaged_journal_refuses_to_start(tmp_path: Path) -> None:
    address = _addresses(1)[0]

    async def write() -> None:
        store = RaftStore(address, [], tmp_path, "test")
        await store.start()
        await store.submit(BOOTSTRAP)
        for i in range(400):  # one log entry each
            await store.submit(command("profile.create", name=f"p{i}"))
        await store.close()

    async def restart() -> None:
        store = RaftStore(address, [], tmp_path, "test")
        try:
            await store.start(ready_timeout=5)
        finally:
            await store.close()

    asyncio.run(write())
    _damage(tmp_path / "journal")
    with pytest.raises(ReplicaDamaged) as caught:
        asyncio.run(restart())
    assert str(tmp_path / "journal") in str(caught.value)


def test_a_follower_with_a_damaged_journal_rebuilds_from_the_leader(tmp_path: Path) -> None:
    async def scenario() -> None:
        addresses = _addresses(3)
        stores = [_store(addresses, i, tmp_path) for i in range(3)]
        try:
            await asyncio.gather(*(s.start() for s in stores))
            await _until(lambda: any(s.leader() == s.address for s in stores))
            await _leader(stores).submit(BOOTSTRAP)
            acknowledged = [f"p{i}" for i in range(400)]
            for name in acknowledged[:300]:
                await _leader(stores).submit(command("profile.create", name=name))
            follower = next(i for i, s in enumerate(stores) if s.leader() != s.address)
            await stores[follower].close()
            _damage(tmp_path / f"m{follower}" / "journal")
            for name in acknowledged[300:]:
                await _leader(stores).submit(command("profile.create", name=name))
            stores[follower] = _store(addresses, follower, tmp_path)
            await stores[follower].start()
            # Served from the moment start returns: every acknowledged write is there.
            assert set(acknowledged) <= _profiles(stores[follower])
            kept = list((tmp_path / f"m{follower}").glob("damaged-*/journal"))
            assert len(kept) == 1  # moved aside for a post-mortem
            assert stores[follower]._require().selfNode is not None  # a voter again
            await _leader(stores).submit(command("profile.create", name="after"))
            await _until(lambda: "after" in _profiles(stores[follower]))
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(scenario())


def test_no_entry_is_acknowledged_before_an_fdatasync_covers_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        addresses = _addresses(3)
        stores = [_store(addresses, i, tmp_path) for i in range(3)]
        acks: list[tuple[int, int]] = []
        try:
            await asyncio.gather(*(s.start() for s in stores))
            await _until(lambda: any(s.leader() == s.address for s in stores))
            leader = _leader(stores)
            await leader.submit(BOOTSTRAP)
            for store in stores:
                store._require().on_acknowledge = lambda acked, durable: acks.append(
                    (acked, durable))
            journal = leader._require().journal
            syncs_before = journal.syncs
            for i in range(100):
                await leader.submit(command("profile.create", name=f"s{i}"))
                # the leader counted itself towards this commit only once it was synced
                assert journal.durable_index >= leader.commit_index()
            await asyncio.gather(*(leader.submit(command("profile.create", name=f"c{i}"))
                                   for i in range(1000)))
            assert journal.durable_index >= leader.commit_index()
            assert acks and all(acked <= durable for acked, durable in acks)
            entries = leader.commit_index()
            assert journal.syncs - syncs_before < entries  # one sync covers many entries
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(scenario())
