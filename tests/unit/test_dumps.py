"""Raft log-compaction dumps: whole or refused, written by a forked child."""

from __future__ import annotations

import gzip
import os
import pickle
import time
from pathlib import Path

import pytest
from pysyncobj import SERIALIZER_STATE

from cluster.state.dumps import MAGIC, CorruptDump, ForkingDump, read_dump, write_dump
from cluster.state.model import Profile, State

META = (("entry", 7, 1), ("entry", 6, 1), {"127.0.0.1:1"})


def _state(profiles: int = 3) -> State:
    state = State(index=profiles)
    for i in range(profiles):
        state.profiles[f"p{i}"] = Profile(f"p{i}", config={"limits.cpu": str(i)})
    return state


def test_a_dump_reads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "snapshot"
    write_dump(path, _state(), META)
    state, meta = read_dump(path)
    assert state == _state() and meta == META
    assert path.read_bytes().startswith(MAGIC)
    assert not (tmp_path / "snapshot.part").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing chunk"])
def test_a_damaged_dump_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "snapshot"
    write_dump(path, _state(200), META)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:  # what a chunk lost on a dropped connection leaves
        data = data[:1000] + data[1000 + 64:]
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDump):
        read_dump(path)


def test_a_dump_from_pysyncobjs_own_serializer_still_loads(tmp_path: Path) -> None:
    """Members upgraded in place have a gzip dump written by pysyncobj itself."""
    path = tmp_path / "snapshot"
    consumer = {"state": _state()}
    path.write_bytes(gzip.compress(pickle.dumps(([{}, consumer], *META))))
    state, meta = read_dump(path)
    assert state == _state() and meta == META


def test_the_child_writes_the_state_as_it_was_at_the_fork(tmp_path: Path) -> None:
    live = _state(1000)
    installed: list[State] = []
    dump = ForkingDump(tmp_path / "snapshot", lambda: live, installed.append)
    assert dump.check() == SERIALIZER_STATE.NOT_SERIALIZING
    dump.serialize(str(tmp_path / "snapshot.tmp"), META)
    live.profiles.clear()  # the parent goes on changing its state meanwhile
    deadline = time.monotonic() + 30
    while (status := dump.check()) == SERIALIZER_STATE.SERIALIZING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert status == SERIALIZER_STATE.SUCCESS
    assert dump.deserialize(str(tmp_path / "snapshot")) == META
    assert installed == [_state(1000)]


def test_the_child_holds_none_of_the_daemons_descriptors(tmp_path: Path) -> None:
    """A pipe's reader sees end-of-file as soon as the parent closes its writer, even
    while a dump child (forked with the writer open) is still running."""
    reader, writer = os.pipe()
    slow = _SlowState()
    dump = ForkingDump(tmp_path / "snapshot", lambda: slow, lambda state: None)  # type: ignore[arg-type,return-value]
    try:
        dump.serialize(str(tmp_path / "snapshot.tmp"), META)
        os.close(writer)
        started = time.monotonic()
        assert os.read(reader, 1) == b""
        assert time.monotonic() - started < 1.0
        assert dump.check() == SERIALIZER_STATE.SERIALIZING  # still pickling
    finally:
        os.close(reader)
        dump.wait()


class _SlowState:
    """Takes 2 s to pickle (in the child)."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        time.sleep(2)
        return (_SlowState, ())
