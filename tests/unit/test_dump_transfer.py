"""Dumps between members, without Raft: chunks carry their offset, a chunk after a hole
or a dump that does not load is refused (the previous dump stays), and a local dump
child cannot rename its older dump over one just installed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import SERIALIZER_STATE

from cluster.state.dump_transfer import DumpTransfer
from cluster.state.dumps import ForkingDump, read_dump, write_dump
from cluster.state.model import Profile, State

META = (("entry", 7, 1), ("entry", 6, 1), {"127.0.0.1:1"})
NODE = "follower"
CHUNK = 512


def _state(profiles: int, tag: str = "") -> State:
    state = State(index=profiles)
    for i in range(profiles):
        state.profiles[f"{tag}p{i}"] = Profile(f"{tag}p{i}", description="d" * 40)
    return state


def _pair(root: Path) -> tuple[DumpTransfer, DumpTransfer, list[State]]:
    """A leader's transfer with a dump of 60 profiles, and a follower's with an older
    dump of 3; the states the follower installed."""
    (root / "leader").mkdir()
    (root / "follower").mkdir()
    write_dump(root / "leader" / "snapshot", _state(60), META)
    write_dump(root / "follower" / "snapshot", _state(3, "old"), META)
    installed: list[State] = []
    leader = DumpTransfer(ForkingDump(root / "leader" / "snapshot", State, installed.append),
                          CHUNK)
    follower = DumpTransfer(
        ForkingDump(root / "follower" / "snapshot", State, installed.append), CHUNK)
    return leader, follower, installed


def _chunks(leader: DumpTransfer) -> list[Any]:
    chunks = []
    while True:
        chunk = leader.getTransmissionData(NODE)
        assert chunk is not None
        chunks.append(chunk)
        if chunk[2]:
            return chunks


def test_a_whole_dump_arrives_and_is_installed_as_loaded(tmp_path: Path) -> None:
    leader, follower, installed = _pair(tmp_path)
    chunks = _chunks(leader)
    assert len(chunks) > 5 and [c[3] for c in chunks] == sorted(c[3] for c in chunks)
    assert [follower.setTransmissionData(c) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    snapshot = tmp_path / "follower" / "snapshot"
    assert snapshot.read_bytes() == (tmp_path / "leader" / "snapshot").read_bytes()
    assert follower.deserialize() == (None, *META)
    assert installed == [_state(60)]
    assert not follower.take_restart()


def test_a_chunk_after_a_hole_is_refused_and_the_resent_dump_is_taken(tmp_path: Path) -> None:
    leader, follower, installed = _pair(tmp_path)
    snapshot = tmp_path / "follower" / "snapshot"
    before = snapshot.read_bytes()
    chunks = _chunks(leader)
    del chunks[3]  # lost with a dropped connection's send buffer
    results = [follower.setTransmissionData(c) for c in chunks]
    assert not any(results)
    assert follower.take_restart()  # asked once for the chunk after the hole ...
    assert follower.refusals == 2  # ... and again at the last chunk, in case it was lost
    assert snapshot.read_bytes() == before
    leader.cancelTransmisstion(NODE)  # what the leader does when asked
    assert [follower.setTransmissionData(c) for c in _chunks(leader)][-1] is True
    assert read_dump(snapshot)[0] == _state(60)


def test_a_dump_that_does_not_load_is_refused_and_the_previous_one_stays(
        tmp_path: Path) -> None:
    leader, follower, installed = _pair(tmp_path)
    snapshot = tmp_path / "follower" / "snapshot"
    before = snapshot.read_bytes()
    chunks = _chunks(leader)
    data = bytearray(chunks[2][0])
    data[10] ^= 0xFF
    chunks[2] = (bytes(data), *chunks[2][1:])
    assert not any(follower.setTransmissionData(c) for c in chunks)
    assert follower.take_restart() and not follower.take_restart()
    assert snapshot.read_bytes() == before
    assert not (tmp_path / "follower" / "snapshot.1.tmp").exists()
    assert installed == []


def test_chunks_from_pysyncobjs_own_serializer_are_taken_in_order(tmp_path: Path) -> None:
    leader, follower, _ = _pair(tmp_path)
    chunks = [c[:3] for c in _chunks(leader)]  # no offsets
    assert follower.setTransmissionData(chunks[0]) is False
    assert [follower.setTransmissionData(c) for c in chunks[1:]][-1] is True


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["deliver", "lose", "repeat", "restart"]), min_size=1,
                max_size=400))
def test_whatever_the_link_does_no_dump_but_the_sent_one_is_installed(
        tmp_path_factory: Any, link: list[str]) -> None:
    """A lossy link (chunks lost, delivered twice, the leader restarting on its own) and
    a leader that restarts when asked: whenever the follower takes a dump it is the
    leader's, byte for byte; with a clean link at the end it always gets there."""
    root = tmp_path_factory.mktemp("link")
    leader, follower, _ = _pair(root)
    sent = (root / "leader" / "snapshot").read_bytes()
    snapshot = root / "follower" / "snapshot"
    done = False
    for step in [*link, *["deliver"] * 200]:
        if step == "restart":
            leader.cancelTransmisstion(NODE)
            continue
        chunk = leader.getTransmissionData(NODE)
        for _ in range({"deliver": 1, "lose": 0, "repeat": 2}[step]):
            if follower.setTransmissionData(chunk):
                assert snapshot.read_bytes() == sent
                done = True
        if follower.take_restart():
            leader.cancelTransmisstion(NODE)
        if done:
            break
    assert done


class _SlowState(State):
    """Takes 1.5 s to pickle (in the dump child)."""

    def __reduce__(self) -> Any:
        time.sleep(1.5)
        return (State, ())


def test_a_local_dump_child_cannot_overwrite_a_dump_installed_meanwhile(
        tmp_path: Path) -> None:
    leader, _, _ = _pair(tmp_path)
    local = ForkingDump(tmp_path / "follower" / "snapshot", _SlowState, lambda s: None)
    follower = DumpTransfer(local, CHUNK)
    follower.serialize((None, *META), 7)  # an older local dump, still being written
    assert follower.checkSerializing()[0] == SERIALIZER_STATE.SERIALIZING
    assert [follower.setTransmissionData(c) for c in _chunks(leader)][-1] is True
    time.sleep(2.0)  # past the time the child would have renamed its dump
    assert read_dump(tmp_path / "follower" / "snapshot")[0] == _state(60)
    assert follower.checkSerializing()[0] != SERIALIZER_STATE.SUCCESS
    local.wait()
