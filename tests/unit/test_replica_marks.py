"""Markers in a real 3-member Raft log (loopback pysyncobj): every replica digests the
state at the marker's own index, even while other writes are in flight, and a replica
changed behind Raft's back is told apart."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cluster.api.replica_check import Report, compare
from cluster.state.commands import command
from cluster.state.digest import MARK
from cluster.state.raft import RaftStore


def _addresses(count: int) -> list[str]:
    found = []
    for _ in range(count):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            found.append(f"127.0.0.1:{sock.getsockname()[1]}")
    return found


@asynccontextmanager
async def _three(root: Path) -> AsyncIterator[list[RaftStore]]:
    addresses = _addresses(3)
    stores = [RaftStore(a, [b for b in addresses if b != a], root / f"m{i}", "test")
              for i, a in enumerate(addresses)]
    try:
        await asyncio.gather(*(store.start() for store in stores))
        yield stores
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def _check(stores: list[RaftStore], mark: str) -> list[Report]:
    await stores[0].submit(command(MARK, mark=mark))
    found = await asyncio.gather(*(s.wait_mark(mark, 10.0) for s in stores))
    return [Report(f"m{i}", f.index, f.digest) if f else Report(f"m{i}", error="behind")
            for i, f in enumerate(found)]


def test_replicas_agree_at_a_marker_amid_concurrent_writes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _three(tmp_path) as stores:
            writes = [stores[i % 3].submit(command("profile.create", name=f"p{i}"))
                      for i in range(200)]
            reports = (await asyncio.gather(*writes[:100], _check(stores, "one"),
                                            *writes[100:]))[100]
            verdict = compare(reports)
            assert verdict.agree, verdict
            assert verdict.index is not None and verdict.index > 1
            later = compare(await _check(stores, "two"))
            assert later.agree and later.index is not None and later.index > verdict.index
            assert later.digest != verdict.digest  # the rest of the writes came between

    asyncio.run(scenario())


def test_a_replica_changed_behind_rafts_back_differs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _three(tmp_path) as stores:
            await stores[0].submit(command("profile.create", name="shared"))
            assert compare(await _check(stores, "before")).agree
            with stores[2].read() as state:
                state.profiles["shared"].description = "changed on one member only"
            verdict = compare(await _check(stores, "after"))
            assert not verdict.agree and verdict.differ == ["m2"]

    asyncio.run(scenario())


def test_a_replica_that_never_applies_the_marker_is_reported_behind(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _three(tmp_path) as stores:
            assert await stores[1].wait_mark("never-committed", 0.2) is None

    asyncio.run(scenario())
