"""The durable Raft journal on its own (cluster/state/journal.py): records round-trip,
a torn tail is cut off, damage in the middle is refused with its offset, meta files are
replaced atomically, and a kill -9 at any point of writing and compacting loses no
entry that a sync covered."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.state.errors import ReplicaDamaged
from cluster.state.journal import MAGIC, META_MAGIC, DurableJournal, MetaFile, encode


def _journal(path: Path, count: int, start: int = 1) -> DurableJournal:
    journal = DurableJournal(str(path))
    for index in range(start, start + count):
        journal.add(f"command {index}".encode() * 3, index, 1 + index // 10)
    journal.sync()
    return journal


def _indexes(path: Path) -> list[int]:
    journal = DurableJournal(str(path))
    try:
        return [entry[1] for entry in journal[:]]
    finally:
        journal._destroy()


def test_records_round_trip_with_commands_indexes_and_terms(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    written = _journal(path, 50)
    entries = list(written[:])
    written._destroy()
    replayed = DurableJournal(str(path))
    assert list(replayed[:]) == entries
    assert replayed[0] == (b"command 1" * 3, 1, 1)
    replayed.add(b"more", 51, 9)  # appends go after the replayed records
    replayed._destroy()
    assert _indexes(path) == list(range(1, 52))


def test_a_torn_tail_is_cut_off_and_the_entries_before_it_survive(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    _journal(path, 20)._destroy()
    size = path.stat().st_size
    with open(path, "ab") as out:  # a crash during an append: half a record
        out.write(encode(b"x" * 100, 21, 3)[:60])
    assert _indexes(path) == list(range(1, 21))
    assert path.stat().st_size == size
    with open(path, "ab") as out:  # the file grew but the data never reached the disk
        out.write(b"\0" * 4096)
    assert _indexes(path) == list(range(1, 21))
    with open(path, "r+b") as out:  # the last record whole in length, wrong in content
        out.seek(size - 3)
        out.write(b"zzz")
    assert _indexes(path) == list(range(1, 20))


@pytest.mark.parametrize("fill", [b"\xa5", b"\0"])
def test_damage_in_the_middle_is_refused_with_the_file_and_offset(tmp_path: Path,
                                                                  fill: bytes) -> None:
    path = tmp_path / "journal"
    _journal(path, 400)._destroy()
    middle = path.stat().st_size // 2
    with open(path, "r+b") as out:
        out.seek(middle)
        out.write(fill * 64)
    with pytest.raises(ReplicaDamaged) as caught:
        DurableJournal(str(path))
    assert str(path) in str(caught.value)
    assert middle - 200 < caught.value.offset <= middle


def test_a_journal_written_by_pysyncobj_is_converted(tmp_path: Path) -> None:
    from pysyncobj.journal import FileJournal

    path = tmp_path / "journal"
    old = FileJournal(str(path))
    for index in range(1, 30):
        old.add(b"legacy %d" % index, index, 2)
    old.setCurrentTerm(4, "127.0.0.1:1")
    old._destroy()
    journal = DurableJournal(str(path))
    assert journal[5] == (b"legacy 6", 6, 2) and len(journal) == 29
    assert journal.getCurrentTerm() == 4 and journal.getVotedForNodeId() == "127.0.0.1:1"
    journal._destroy()
    assert path.read_bytes().startswith(MAGIC)


def test_the_meta_file_is_replaced_atomically_and_checked(tmp_path: Path) -> None:
    meta = MetaFile(tmp_path / "journal.meta")
    meta.store({"currentTerm": 3, "votedForNodeId": "a:1"})
    inode = os.stat(meta.path).st_ino
    meta.store({"currentTerm": 4, "votedForNodeId": None})
    assert os.stat(meta.path).st_ino != inode  # a new file renamed in, not rewritten
    assert meta.load() == {"currentTerm": 4, "votedForNodeId": None}
    assert not meta.path.with_name("journal.meta.tmp").exists()
    # A crash before the rename leaves a stray temporary file and the old meta intact.
    meta.path.with_name("journal.meta.tmp").write_bytes(META_MAGIC + b'{"currentTerm": ')
    assert meta.load()["currentTerm"] == 4
    data = bytearray(meta.path.read_bytes())
    data[len(META_MAGIC) + 2] ^= 0xFF
    meta.path.write_bytes(bytes(data))
    with pytest.raises(ReplicaDamaged):  # a lost vote could be cast twice: refuse
        meta.load()


def test_a_term_and_vote_survive_a_reopen(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "journal", 3)
    journal.setCurrentTerm(7, "127.0.0.1:9")
    journal.setRaftCommitIndex(3)
    journal._destroy()
    again = DurableJournal(str(tmp_path / "journal"))
    assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) \
        == (7, "127.0.0.1:9", 3)


def test_compaction_cuts_in_place_and_cutting_keeps_the_prefix(tmp_path: Path) -> None:
    """The records a dump covers are dropped without copying the rest into a new file
    (that took seconds in the Raft thread at 1M instances): same file, blocks freed."""
    path = tmp_path / "journal"
    journal = _journal(path, 3000)
    inode, size = os.stat(path).st_ino, os.stat(path).st_size
    journal.deleteEntriesTo(2900)  # a dump covers entries 1..2900
    assert os.stat(path).st_ino == inode and os.stat(path).st_size == size
    assert journal.size < size // 10 and journal[0][1] == 2901
    assert os.stat(path).st_blocks * 512 < size // 2  # the dead records' blocks are freed
    journal.deleteEntriesFrom(30)  # an uncommitted suffix replaced by the leader
    journal.add(b"new", 2931, 50)
    journal._destroy()
    assert _indexes(path) == [*range(2901, 2931), 2931]
    assert os.stat(path).st_ino != inode  # reopened: rewritten without the dead part
    assert os.stat(path).st_size < size // 10
    assert _indexes(path) == [*range(2901, 2931), 2931]


def test_a_first_offset_stored_for_another_file_is_ignored(tmp_path: Path) -> None:
    """A crash after a journal was renamed in, before the meta file said so: the stored
    first offset is for the file that was replaced, and replay starts at the header."""
    path = tmp_path / "journal"
    journal = _journal(path, 100)
    journal.deleteEntriesTo(60)
    journal._destroy()
    meta = MetaFile(path.with_name("journal.meta")).load()
    fresh = _journal(tmp_path / "other", 100, start=61)
    fresh._destroy()
    os.replace(tmp_path / "other", path)  # a new file, as a rewrite renames one in
    MetaFile(path.with_name("journal.meta")).store(meta)  # the meta of the old one
    assert _indexes(path) == list(range(61, 161))


def test_sync_counts_one_fdatasync_per_group_of_appends(tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path / "journal"))
    before = journal.syncs
    for index in range(1, 101):
        journal.add(b"c", index, 1)
    assert journal.durable_index == 0
    assert journal.sync() and not journal.sync()
    assert journal.syncs == before + 1 and journal.durable_index == 100
    journal._destroy()


_WRITER = """
import sys
from cluster.state.journal import DurableJournal
path, ack = sys.argv[1], sys.argv[2]
journal = DurableJournal(path)
index = journal[-1][1] if len(journal) else 0
with open(ack, "a", buffering=1) as acked:
    while True:
        for _ in range(7):
            index += 1
            journal.add(b"payload %d " % index * 20, index, 1)
        journal.sync()
        acked.write(f"{index}\\n")  # acknowledged only once synced
        if len(journal) > 300:
            journal.deleteEntriesTo(len(journal) - 50)
"""


def test_kill_9_while_writing_and_compacting_loses_no_synced_entry(tmp_path: Path) -> None:
    path, ack = tmp_path / "journal", tmp_path / "acked"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for round_ in range(12):
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(ack)], env=env)
        time.sleep(0.25 + 0.037 * round_)  # a different point of the cycle each round
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        acked = [int(line) for line in ack.read_text().split()] if ack.exists() else []
        indexes = _indexes(path)  # replays, cutting a torn tail; must not raise
        assert indexes == list(range(indexes[0], indexes[-1] + 1)) if indexes else True
        if acked:
            assert indexes and indexes[-1] >= acked[-1], f"round {round_} lost entries"
    assert ack.exists() and len(ack.read_text().split()) > 50  # wrote and compacted


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["add", "sync", "compact", "cut", "crash"]),
                          st.integers(1, 20)), max_size=30))
def test_random_writes_compactions_and_crashes_keep_every_synced_entry(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]) -> None:
    """A model of what must survive: a crash (the process dies, unsynced appends may be
    torn at any byte) keeps every synced entry and replays to a prefix of what was
    written."""
    path = tmp_path_factory.mktemp("j") / "journal"
    journal = DurableJournal(str(path))
    written: list[int] = []
    synced = 0
    for op, amount in steps:
        if op == "add":
            for _ in range(amount):
                index = (written[-1] if written else 0) + 1
                journal.add(pickle.dumps(index) * amount, index, 1)
                written.append(index)
        elif op == "sync":
            journal.sync()
            synced = len(written)
        elif op == "compact" and written:
            keep = min(amount, len(journal))
            journal.deleteEntriesTo(len(journal) - keep)
            written, synced = written[-keep:], keep  # the rewrite is synced
        elif op == "cut" and len(journal) > synced:
            cut = max(synced, len(journal) - amount)
            journal.deleteEntriesFrom(cut)
            written = written[:cut]
        elif op == "crash":
            os.close(journal._fd)
            if len(written) > synced:  # the last record was never synced: it may tear
                _tear(path, amount)
            journal = DurableJournal(str(path))
            replayed = [entry[1] for entry in journal[:]]
            assert written[:synced] == replayed[:synced]
            assert replayed == written[:len(replayed)]
            written, synced = replayed, len(replayed)
    journal._destroy()


def _tear(path: Path, amount: int) -> None:
    """Cut the last record ``amount`` bytes short (at least its first byte stays): a
    torn append. Called only when that record was never synced."""
    data = path.read_bytes()
    last = len(MAGIC)
    offset = len(MAGIC)
    while offset + 8 <= len(data):
        length = struct.unpack_from("<I", data, offset)[0]
        last, offset = offset, offset + 8 + length
    if amount % 3 == 0 and last > len(MAGIC):
        path.write_bytes(data[:max(last + 1, len(data) - amount)])
