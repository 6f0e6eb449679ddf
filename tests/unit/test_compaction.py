"""Raft log compaction by size (cluster/state/compaction.py): the pure policy, and a real
RaftStore whose journal of a few large entries is compacted (pysyncobj's own policy
counts entries, and a few hundred large batches never reached it: issue 13)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.state import compaction
from cluster.state.commands import command
from cluster.state.compaction import CompactionPolicy, compaction_due
from cluster.state.raft import RaftStore, raft_conf

MiB = 2**20


def _address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_small_journal_is_never_compacted() -> None:
    assert not compaction_due(10 * MiB, 0, min_bytes=64 * MiB)
    assert not compaction_due(63 * MiB, 1, min_bytes=64 * MiB, ratio=0.25)


def test_a_journal_past_the_minimum_is_compacted_when_no_dump_exists() -> None:
    assert compaction_due(64 * MiB, 0, min_bytes=64 * MiB)


def test_a_big_dump_raises_the_threshold_by_the_ratio() -> None:
    dump = 1000 * MiB
    assert not compaction_due(249 * MiB, dump, min_bytes=64 * MiB, ratio=0.25)
    assert compaction_due(250 * MiB, dump, min_bytes=64 * MiB, ratio=0.25)


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1, 2**30),
       st.floats(0.01, 4.0))
def test_due_exactly_when_past_both_bounds(journal: int, dump: int, least: int,
                                           ratio: float) -> None:
    due = compaction_due(journal, dump, least, ratio)
    assert due == (journal >= least and journal >= ratio * dump)


def test_the_policy_reads_the_dump_size_from_the_file(tmp_path: Path) -> None:
    dump = tmp_path / "snapshot"
    policy = CompactionPolicy(str(dump), min_bytes=100, ratio=1.0)
    assert policy.due(150, now=0.0)  # no dump yet
    dump.write_bytes(b"x" * 1000)
    assert policy.due(150, now=0.5)  # the size is looked at once per STAT_PERIOD
    assert not policy.due(150, now=2.0)
    assert policy.due(1000, now=2.1)


def test_the_daemon_config_leaves_compaction_to_the_size_policy(tmp_path: Path) -> None:
    conf = raft_conf(tmp_path, "secret", "127.0.0.1:1")
    assert conf.logCompactionMinEntries >= compaction.NEVER_ENTRIES
    assert conf.logCompactionMinTime >= compaction.NEVER_SECONDS


def test_a_journal_of_few_large_entries_is_compacted_by_its_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 entries of ~50 KiB each: far below any entry count, but 2 MiB of journal."""
    monkeypatch.setattr(compaction, "MIN_BYTES", 256 * 1024)
    address = _address()
    store = RaftStore(address, [], tmp_path, "test")

    async def scenario() -> None:
        await store.start()
        try:
            for batch in range(40):
                await asyncio.gather(*(
                    store.submit(command("profile.create", name=f"p{batch}-{i}",
                                         description="x" * 500))
                    for i in range(100)))
            deadline = time.monotonic() + 30
            while not (tmp_path / "snapshot").exists():
                assert time.monotonic() < deadline, "the log was never compacted"
                await asyncio.sleep(0.05)
            journal = tmp_path / "journal"
            deadline = time.monotonic() + 30
            while journal.stat().st_size > 1024 * 1024:
                assert time.monotonic() < deadline, "the journal was not cut"
                await asyncio.sleep(0.05)
            with store.read() as state:
                assert len(state.profiles) >= 4000
            sync = store._require()
            # The tick thread counts the cut just after it made it (the journal shrank).
            deadline = time.monotonic() + 10
            while sync.compactions < 1:
                assert time.monotonic() < deadline, sync.events
                await asyncio.sleep(0.05)
            assert sync.dumps_started >= sync.compactions, sync.events
            kinds = [what for _, what, _ in sync.events]
            assert "dump started" in kinds and "log cut" in kinds
        finally:
            await store.close()
        reopened = RaftStore(address, [], tmp_path, "test")
        await reopened.start()
        try:
            with reopened.read() as state:
                assert {f"p39-{i}" for i in range(100)} <= set(state.profiles)
                assert len(state.profiles) >= 4000
        finally:
            await reopened.close()

    asyncio.run(scenario())
