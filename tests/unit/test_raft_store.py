"""RaftStore on a real one-node pysyncobj (loopback): batching, errors, restart."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from cluster.state.commands import Command, Result, command
from cluster.state.errors import BadRequest, Conflict
from cluster.state.raft import RaftStore, _Replica
from cluster.state.store import Change


def _address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def _bootstrapped(path: Path, address: str) -> RaftStore:
    store = RaftStore(address, [], path, "test")
    await store.start()
    with store.read() as state:
        empty = not state.members
    if empty:
        capacity = {"cpu": 64, "memory": 2.0**40, "disk": 2.0**40}
        await store.submit(command("cluster.bootstrap", member={"name": "m1", "capacity": capacity},
                                   pool={"name": "default", "driver": "dir"},
                                   network={"name": "br0"}))
    return store


def test_concurrent_submits_share_batches_and_keep_their_own_results(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await _bootstrapped(tmp_path, _address())
        try:
            names = [f"p{i}" for i in range(300)]
            results = await asyncio.gather(
                *(store.submit(command("profile.create", name=n)) for n in names),
                store.submit(command("profile.create", name="bad/name")),
                store.submit(command("profile.create", name="p7")),
                return_exceptions=True)
            assert results[:300] == [None] * 300
            assert isinstance(results[300], BadRequest)
            assert isinstance(results[301], Conflict)  # p7 already made in the same batch
            with store.read() as state:
                assert set(names) <= set(state.profiles) and "bad/name" not in state.profiles
        finally:
            await store.close()

    asyncio.run(scenario())


def test_state_survives_a_restart_from_the_journal(tmp_path: Path) -> None:
    address = _address()

    async def first() -> None:
        store = await _bootstrapped(tmp_path, address)
        await asyncio.gather(*(store.submit(command("profile.create", name=f"q{i}"))
                               for i in range(50)))
        await store.close()

    async def second() -> set[str]:
        store = RaftStore(address, [], tmp_path, "test")
        await store.start()
        with store.read() as state:
            found = set(state.profiles)
        await store.close()
        return found

    asyncio.run(first())
    assert {f"q{i}" for i in range(50)} <= asyncio.run(second())


def test_log_entries_are_cut_by_commands_and_by_plan_items() -> None:
    from cluster.state.raft import BATCH, BATCH_ITEMS, _batch_length

    def queued(*sizes: int) -> list[tuple[Command, None, float]]:
        return [(Command(id=str(n), type="instance.create_many" if size else "profile.create",
                         args={"items": [{}] * size} if size else {}), None, 1.0)
                for n, size in enumerate(sizes)]

    assert _batch_length(queued(*[0] * (BATCH + 7))) == BATCH
    assert _batch_length(queued(0, 0, 0)) == 3
    assert _batch_length(queued(*[256] * 40)) == BATCH_ITEMS // 256
    assert _batch_length(queued(BATCH_ITEMS + 1, 1)) == 1  # never less than one command
    assert _batch_length(queued(1, BATCH_ITEMS)) == 1


def test_pysyncobjs_resent_entries_warning_is_info_and_other_criticals_stay(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("pysyncobj.syncobj")
    with caplog.at_level(logging.INFO, logger="pysyncobj.syncobj"):
        logger.critical("truncating already-applied log entries from index %d "
                        "(last applied: %d) - state machine may have diverged", 2, 11)
        logger.critical("something else")
    assert [(r.levelname, r.getMessage()[:36]) for r in caplog.records] == [
        ("INFO", "truncating already-applied log entri"), ("CRITICAL", "something else")]


def test_a_replica_waits_for_the_index_a_peer_saw_committed(tmp_path: Path) -> None:
    async def scenario() -> None:
        address = _address()
        assert RaftStore(address, [], tmp_path, "test").commit_index() == 0  # Raft not running
        store = await _bootstrapped(tmp_path, address)
        try:
            await store.submit(command("profile.create", name="seen"))
            committed = store.commit_index()
            assert committed > 0
            assert await store.wait_applied(committed, 5.0)
            assert store.applied_index() >= committed
            assert not await store.wait_applied(committed + 1000, 0.05)  # bounded
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_replica_middleware_applies_a_trusted_peers_index_first(tmp_path: Path) -> None:
    """Over the unix socket (trusted) a request with the header waits for the index; one
    without it, or with junk, does not."""
    from types import SimpleNamespace

    from aiohttp import ClientSession, UnixConnector, web

    from cluster.api.app import replica_middleware
    from cluster.api.context import CTX
    from cluster.transport.peers import APPLIED_HEADER

    waited: list[tuple[int, float]] = []

    class Store:
        async def wait_applied(self, index: int, timeout: float) -> bool:
            waited.append((index, timeout))
            return True

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=f"after {len(waited)}")

    async def scenario() -> list[str]:
        app = web.Application(middlewares=[replica_middleware()])
        context: Any = SimpleNamespace(store=Store())
        app[CTX] = context
        app.router.add_get("/x", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = str(tmp_path / "s.sock")
        await web.UnixSite(runner, sock).start()
        answers = []
        try:
            async with ClientSession(connector=UnixConnector(path=sock)) as session:
                for headers in ({APPLIED_HEADER: "1234"}, {}, {APPLIED_HEADER: "-1"}):
                    async with session.get("http://local/x", headers=headers) as resp:
                        answers.append(await resp.text())
        finally:
            await runner.cleanup()
        return answers

    assert asyncio.run(scenario()) == ["after 1", "after 1", "after 1"]
    assert [index for index, _ in waited] == [1234]


def test_reads_during_a_rebind_see_the_last_state_not_an_empty_one(tmp_path: Path) -> None:
    """A voter switching to follower (or back) restarts Raft, which replays its journal into
    a fresh replica; the API reading meanwhile must not find its cluster gone."""
    async def scenario() -> int:
        address = _address()
        store = await _bootstrapped(tmp_path, address)
        try:
            await store.submit(command("profile.create", name="kept"))
            rebind = asyncio.create_task(store.rebind(address, [], "test", fresh=False))
            reads = 0
            while not rebind.done():
                with store.read() as state:
                    assert "kept" in state.profiles and "m1" in state.members
                reads += 1
                await asyncio.sleep(0)
            await rebind
            with store.read() as state:
                assert "kept" in state.profiles
            return reads
        finally:
            await store.close()

    assert asyncio.run(scenario()) > 0


def _failing_listener(change: Change) -> None:
    raise RuntimeError(f"listener broke on {change.command.id}")


def test_a_listener_that_raises_neither_escapes_apply_nor_silences_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    replica = _Replica()
    heard: list[str] = []
    replica.listeners[:] = [_failing_listener, lambda change: heard.append(change.command.id)]
    cmd = Command(id="p1", type="profile.create", args={"name": "p1"}, time=1.0)
    with caplog.at_level(logging.ERROR, logger="cluster.state.raft"):
        result = replica.apply_command(cmd, _doApply=True)
    assert isinstance(result, Result) and result.ok
    assert heard == ["p1"] and "p1" in replica.state.profiles
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)


def test_an_entry_whose_listener_raises_is_applied_once(tmp_path: Path) -> None:
    """On a real node: the command commits, its result comes back, and the entry is not
    applied again on later ticks (the index moves by one, the listener hears it once)."""
    async def scenario() -> tuple[int, list[str]]:
        store = await _bootstrapped(tmp_path, _address())
        heard: list[str] = []
        store._replica.listeners[:0] = [_failing_listener]
        store._replica.listeners.append(lambda change: heard.append(change.command.id))
        try:
            with store.read() as state:
                index = state.index
            await store.submit(Command(id="once", type="profile.create", args={"name": "p1"},
                                       time=1.0), timeout=2.0)
            await asyncio.sleep(0.5)  # some ticks, in which a re-apply would show
            with store.read() as state:
                return state.index - index, heard
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (1, ["once"])
