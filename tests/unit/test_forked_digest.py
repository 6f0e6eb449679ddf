"""A large replica's digest at a marker is taken by a forked child, off the Raft thread
(cluster/state/forked_digest.py): at a million instances the digest in place stalled
apply and Raft for about a minute (issue 13)."""

from __future__ import annotations

import os
import pickle
import threading
import time
import tracemalloc

import pytest

from cluster.state import digest, forked_digest
from cluster.state.apply import apply
from cluster.state.digest import KEPT_MARKS, Mark, MarkBook, state_digest
from cluster.state.model import Action, Instance, State
from simulator.fake_driver import FakeDriver
from simulator.sim_workload import create_many_command, setup_phases


def _placed(count: int) -> State:
    driver = FakeDriver(3)
    hosts = driver.members(50)
    state = State()
    for phase in setup_phases(hosts, time.time()):
        for cmd in phase:
            assert apply(state, cmd).ok
    specs = list(driver.instances(count))
    for first in range(0, count, 256):
        plan = [(spec, hosts[(first + i) % len(hosts)].name)
                for i, spec in enumerate(specs[first:first + 256])]
        assert apply(state, create_many_command(plan)).ok
    return state


def _wait(book: MarkBook, mark: str, timeout: float = 60.0) -> Mark:
    deadline = time.monotonic() + timeout
    while (found := book.get(mark)) is None:
        assert time.monotonic() < deadline, "the digest child never answered"
        time.sleep(0.01)
    return found


def test_a_forked_digest_is_of_the_state_at_the_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked_digest, "FORK_FROM_INSTANCES", 0)
    state = _placed(300)
    expected = state_digest(state)
    book = MarkBook()
    book.record("m", 42, state)
    state.instances.popitem()  # apply goes on at once after the marker
    state.config["changed"] = "after the marker"
    found = _wait(book, "m")
    assert found == Mark("m", 42, expected)
    assert book.get("m") == found  # kept once read


def test_a_digest_that_fails_in_the_child_reports_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked_digest, "FORK_FROM_INSTANCES", 0)
    state = _placed(10)
    state.instances["x"] = Instance("u", "x", "container", "m1", "x86_64", "", 1.0,
                                    pending=[Action(1, "start", {"lock": threading.Lock()})])
    book = MarkBook()
    book.record("bad", 7, state)
    assert _wait(book, "bad").digest.startswith("error:")


def test_old_forked_marks_are_dropped_and_their_children_reaped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked_digest, "FORK_FROM_INSTANCES", 0)
    state = _placed(20)
    book = MarkBook()
    for i in range(KEPT_MARKS + 2):
        book.record(f"m{i}", i, state)
    assert book.get("m0") is None and book.get("m1") is None
    assert _wait(book, f"m{KEPT_MARKS + 1}").digest == state_digest(state)
    for i in range(2, KEPT_MARKS + 2):
        _wait(book, f"m{i}")
    assert not _zombie_children()  # every child reaped, the dropped ones too


def _zombie_children() -> list[int]:
    """This process's children that exited and were not reaped (Linux /proc)."""
    found = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as listing:
            for pid in listing.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                            found.append(int(pid))
                except FileNotFoundError:
                    continue
    return found


def test_a_large_replica_is_not_stalled_by_its_digest() -> None:
    state = _placed(forked_digest.FORK_FROM_INSTANCES + 1000)
    started = time.perf_counter()
    in_place = state_digest(state)
    digest_seconds = time.perf_counter() - started
    book = MarkBook()
    started = time.perf_counter()
    book.record("big", 1, state)
    record_seconds = time.perf_counter() - started
    assert record_seconds < digest_seconds / 4, (record_seconds, digest_seconds)
    assert _wait(book, "big").digest == in_place
    assert pickle.loads(pickle.dumps(state)).index == state.index


def test_the_digest_is_the_same_however_often_the_encoding_is_hashed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = _placed(500)
    monkeypatch.setattr(digest, "FLUSH_PIECES", 10**12)  # all joined at the end, as before
    whole = state_digest(state)
    monkeypatch.setattr(digest, "FLUSH_PIECES", 1)
    assert state_digest(state) == whole


def test_the_digest_of_a_large_state_needs_little_memory() -> None:
    """At 1M instances the joined encoding took ~8 GiB, and the OOM killer took the
    digest child; hashed in pieces it needs a few MiB at any size."""
    state = _placed(20_000)
    tracemalloc.start()
    try:
        state_digest(state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 2**20, f"{peak / 2**20:.0f} MiB"
