"""Dumps (snapshots) between real RaftStores on loopback: a dump received damaged or with
a hole is refused before it replaces the follower's dump and is sent again, and a member
whose own dump is damaged never serves a partial replica (it rebuilds from the leader,
or a lone member stops)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.state.commands import command
from cluster.state.dumps import read_dump
from cluster.state.errors import ReplicaDamaged
from cluster.state.raft import RaftStore

BOOTSTRAP = command("cluster.bootstrap",
                    member={"name": "m1", "capacity": {"cpu": 64, "memory": 2.0**40,
                                                       "disk": 2.0**40}},
                    pool={"name": "default", "driver": "dir"}, network={"name": "br0"})
CHUNK = 4096  # so that a test dump takes many chunks


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


def _profiles(store: RaftStore) -> set[str]:
    with store.read() as state:
        return set(state.profiles)


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _leader(stores: list[RaftStore]) -> int:
    return next(i for i, s in enumerate(stores) if s.leader() == s.address)


async def _write(store: RaftStore, names: list[str]) -> None:
    for start in range(0, len(names), 50):  # several log entries, padded: many chunks
        await asyncio.gather(*(store.submit(command("profile.create", name=n,
                                                    description="d" * 200))
                               for n in names[start:start + 50]))


async def _compact(store: RaftStore) -> None:
    sync = store._require()
    first = sync.getStatus()["log_len"]
    sync.forceLogCompaction()
    await _until(lambda: sync.getStatus()["log_len"] < first)


def _serializer(store: RaftStore) -> Any:
    """What pysyncobj sends dumps through, its chunks made small."""
    serializer = store._require()._SyncObj__serializer  # type: ignore[attr-defined]
    if hasattr(serializer, "chunk_bytes"):
        serializer.chunk_bytes = CHUNK
    else:  # pysyncobj's own Serializer
        serializer._Serializer__transmissionBatchSize = CHUNK
    return serializer


def _damage_a_chunk(serializer: Any) -> list[int]:
    """Flip a byte in one chunk in the middle of the first dump sent."""
    send = serializer.getTransmissionData
    done: list[int] = []

    def damaged(node: Any) -> Any:
        chunk = send(node)
        if chunk and chunk[0] and not chunk[1] and not done:
            done.append(1)
            data = bytearray(chunk[0])
            data[len(data) // 2] ^= 0xFF
            return (bytes(data), *chunk[1:])
        return chunk

    serializer.getTransmissionData = damaged
    return done


def _lose_a_chunk(serializer: Any) -> list[int]:
    """One chunk of the first dump read for sending and never delivered: what a
    dropped connection's send buffer takes with it when the member reconnects before
    the leader's next tick."""
    send = serializer.getTransmissionData
    done: list[int] = []

    def lossy(node: Any) -> Any:
        chunk = send(node)
        if chunk and chunk[0] and not chunk[1] and not done:
            done.append(1)
            return send(node)
        return chunk

    serializer.getTransmissionData = lossy
    return done


class _SnapshotWatch(logging.Handler):
    """At every warning or error (pysyncobj's 'failed to load full dump', corral's
    refusals), whether the follower's dump file loads at that moment."""

    def __init__(self, snapshot: Path) -> None:
        super().__init__(logging.WARNING)
        self.snapshot = snapshot
        self.seen: list[tuple[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            read_dump(self.snapshot)
            loads = True
        except Exception:  # noqa: BLE001
            loads = not self.snapshot.exists()
        self.seen.append((record.getMessage(), loads))


@pytest.mark.parametrize("fault", [_damage_a_chunk, _lose_a_chunk])
def test_a_received_dump_is_checked_before_it_counts_and_is_sent_again(
        tmp_path: Path, fault: Callable[[Any], list[int]]) -> None:
    async def scenario() -> None:
        addresses = _addresses(3)
        stores = [_store(addresses, i, tmp_path) for i in range(3)]
        watch = _SnapshotWatch(Path())
        loggers = [logging.getLogger(n) for n in ("pysyncobj.syncobj", "cluster.state")]
        for logger in loggers:
            logger.addHandler(watch)
        try:
            await asyncio.gather(*(s.start() for s in stores))
            await _until(lambda: any(s.leader() == s.address for s in stores))
            leader = _leader(stores)
            lagging = (leader + 1) % 3
            await stores[leader].submit(BOOTSTRAP)
            await _write(stores[leader], [f"a{i}" for i in range(100)])
            await _compact(stores[lagging])  # its own good dump, to be kept
            before = (tmp_path / f"m{lagging}" / "snapshot").read_bytes()
            await stores[lagging].close()
            acknowledged = [f"p{i}" for i in range(300)]
            await _write(stores[leader], acknowledged)
            for index in {0, 1, 2} - {lagging}:
                await _compact(stores[index])
            injected = fault(_serializer(stores[leader]))

            watch.snapshot = tmp_path / f"m{lagging}" / "snapshot"
            assert watch.snapshot.read_bytes() == before
            stores[lagging] = _store(addresses, lagging, tmp_path)
            await stores[lagging].start()
            await _until(lambda: set(acknowledged) <= _profiles(stores[lagging]))
            assert injected, "no dump was sent"
            # Its dump file loaded at every warning: the bad dump never replaced it.
            assert watch.seen and all(loads for _, loads in watch.seen), watch.seen
            assert not [m for m, _ in watch.seen if "failed to load full dump" in m]
            transfer = stores[lagging]._require().transfer  # type: ignore[attr-defined]
            assert transfer.refusals >= 1  # refused, not acknowledged, and sent again
            state, _ = read_dump(watch.snapshot)
            assert set(acknowledged) <= set(state.profiles)
            assert stores[lagging].replica_loaded
        finally:
            for logger in loggers:
                logger.removeHandler(watch)
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(scenario())


def _truncate(snapshot: Path) -> None:
    data = snapshot.read_bytes()
    snapshot.write_bytes(data[: len(data) // 2])


def test_a_follower_with_a_damaged_dump_rebuilds_and_never_serves_a_partial_replica(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        addresses = _addresses(3)
        stores = [_store(addresses, i, tmp_path) for i in range(3)]
        try:
            await asyncio.gather(*(s.start() for s in stores))
            await _until(lambda: any(s.leader() == s.address for s in stores))
            leader = _leader(stores)
            follower = (leader + 1) % 3
            await stores[leader].submit(BOOTSTRAP)
            acknowledged = [f"p{i}" for i in range(200)]
            await _write(stores[leader], acknowledged[:150])
            await _until(lambda: set(acknowledged[:150]) <= _profiles(stores[follower]))
            await _compact(stores[follower])
            await stores[follower].close()
            _truncate(tmp_path / f"m{follower}" / "snapshot")
            await _write(stores[leader], acknowledged[150:])

            restarted = stores[follower] = _store(addresses, follower, tmp_path)
            served: list[int] = []  # sizes of what it would serve, while it starts

            def loaded() -> bool:  # a store that cannot tell serves what it has
                return bool(getattr(restarted, "replica_loaded", True))

            async def sample() -> None:
                while True:
                    if loaded():
                        served.append(len(_profiles(restarted)))
                    await asyncio.sleep(0.005)

            sampler = asyncio.create_task(sample())
            try:
                await restarted.start()
                await asyncio.sleep(0.05)
            finally:
                sampler.cancel()
            assert set(acknowledged) <= _profiles(restarted)
            assert served and min(served) >= len(acknowledged)  # never partial
            assert loaded()
            kept = list((tmp_path / f"m{follower}").glob("damaged-*/snapshot"))
            assert len(kept) == 1  # moved aside for a post-mortem
            assert restarted._require().selfNode is not None  # a voter again
            await stores[leader].submit(command("profile.create", name="after"))
            await _until(lambda: "after" in _profiles(restarted))
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(scenario())


def test_a_lone_member_with_a_damaged_dump_refuses_to_start(tmp_path: Path) -> None:
    address = _addresses(1)[0]

    async def write() -> None:
        store = RaftStore(address, [], tmp_path, "test")
        await store.start()
        await store.submit(BOOTSTRAP)
        await _write(store, [f"p{i}" for i in range(100)])
        await _compact(store)
        await store.close()

    async def restart() -> RaftStore:
        store = RaftStore(address, [], tmp_path, "test")
        try:
            await store.start(ready_timeout=5)
        finally:
            await store.close()
        return store

    asyncio.run(write())
    _truncate(tmp_path / "snapshot")
    with pytest.raises(ReplicaDamaged) as caught:
        store = asyncio.run(restart())
        pytest.fail(f"started with {len(_profiles(store))} of 100 profiles")
    assert str(tmp_path / "snapshot") in str(caught.value)
