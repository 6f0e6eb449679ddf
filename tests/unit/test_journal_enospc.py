"""A full disk under the Raft journal (cluster/state/journal.py): an append that fails
for lack of space leaves no partial record behind, so what is appended and synced once
space is freed replays intact, and a failed meta write leaves no temporary file. The
chaos suite's ``disk`` fault does the same on a real, filled loop file system."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cluster.state import journal as journal_module
from cluster.state.journal import DurableJournal, MetaFile


def _indexes(path: Path) -> list[int]:
    journal = DurableJournal(str(path))
    try:
        return [entry[1] for entry in journal[:]]
    finally:
        journal._destroy()


class _FullDisk:
    """``os.write`` that writes part of its data, then fails with ENOSPC (a file system
    that fills up half-way through a record), until ``freed``."""

    def __init__(self) -> None:
        self.full = True
        self.real = os.write

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if not self.full:
            return self.real(fd, data)
        if len(data) > 8:
            return self.real(fd, bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_an_append_that_meets_a_full_disk_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    journal = DurableJournal(str(path))
    for index in range(1, 6):
        journal.add(b"command %d " % index * 10, index, 1)
    journal.sync()
    disk = _FullDisk()
    monkeypatch.setattr(journal_module.os, "write", disk.write)
    with pytest.raises(OSError) as failed:
        journal.add(b"command 6 " * 10, 6, 1)
    assert failed.value.errno == errno.ENOSPC
    assert len(journal) == 5 and journal.durable_index == 5  # not appended, not durable
    disk.full = False  # space freed: the member goes on
    journal.add(b"command 6 " * 10, 6, 1)
    journal.add(b"command 7 " * 10, 7, 1)
    journal.sync()
    assert journal.durable_index == 7
    journal._destroy()
    assert _indexes(path) == [1, 2, 3, 4, 5, 6, 7]  # the synced entries replay intact


def test_a_cut_after_a_failed_append_cuts_at_the_right_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    journal = DurableJournal(str(path))
    for index in range(1, 4):
        journal.add(b"c%d" % index * 20, index, 1)
    journal.sync()
    disk = _FullDisk()
    monkeypatch.setattr(journal_module.os, "write", disk.write)
    with pytest.raises(OSError):
        journal.add(b"c4" * 20, 4, 1)
    disk.full = False
    journal.add(b"c4" * 20, 4, 1)
    journal.add(b"c5" * 20, 5, 2)
    journal.deleteEntriesFrom(4)  # the leader replaces index 5
    journal.add(b"c5'" * 20, 5, 3)
    journal.sync()
    journal._destroy()
    assert _indexes(path) == [1, 2, 3, 4, 5]


def test_a_meta_write_that_meets_a_full_disk_keeps_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = MetaFile(tmp_path / "journal.meta")
    meta.store({"currentTerm": 3})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "fsync", no_space)
    with pytest.raises(OSError):
        meta.store({"currentTerm": 4})
    monkeypatch.undo()
    assert meta.load() == {"currentTerm": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.meta"]
