"""Dumps between real daemons in a 3-member namespace cluster, compacting every few
hundred entries: a follower restarted with a damaged dump never serves a partial
profile list (it answers nothing, or 503, until it has fetched the state from the
leader), and a dump that arrives damaged is refused and sent again."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.state.raft import COMPACTION_ENV
from devtools import nemesis
from devtools.harness import DaemonProcess
from tests.cluster.conftest import namespace_cluster
from tests.integration.api import Api

pytestmark = pytest.mark.real
COMPACT_EVERY = 150


def _leader(member: DaemonProcess) -> str:
    out = member.corral("cluster", "list", "--format", "json", timeout=15)
    return next(m["server_name"] for m in json.loads(out.stdout)
                if "database-leader" in m["roles"])


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.2)


def _create(api: Api, names: list[str], written: set[str]) -> None:
    for name in names:
        status, doc = api.call("POST", "/1.0/profiles", {"name": name})
        assert status < 400, doc
        written.add(name)


def _names(api: Api) -> set[str] | None:
    """The profiles ``api`` serves, or None when it serves none (down, or 503)."""
    try:
        status, doc = api.call("GET", "/1.0/profiles")
    except OSError:
        return None
    if status == 503:
        return None
    assert status == 200, doc
    return {url.rsplit("/", 1)[-1] for url in doc["metadata"]}


class _Watch(threading.Thread):
    """GET /1.0/profiles on a member over and over: every list it serves must hold
    every profile acknowledged before the request."""

    def __init__(self, api: Api, written: set[str]) -> None:
        super().__init__(daemon=True)
        self.api, self.written = api, written
        self.served: list[int] = []
        self.partial: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            before = set(self.written)
            names = _names(self.api)
            if names is not None:
                self.served.append(len(names))
                if not before <= names:
                    self.partial.append((len(names), len(before)))
            time.sleep(0.02)


def _restart_watched(directory: Path, member: DaemonProcess, written: set[str],
                     meanwhile: Callable[[], None] = lambda: None) -> _Watch:
    """Start ``member`` again while its profile list is watched; ``meanwhile`` runs
    while it starts. Returns once it serves every acknowledged profile."""
    watch = _Watch(Api(str(member.socket)), written)
    watch.start()
    restart = threading.Thread(target=nemesis.start, args=(directory, member.root.name),
                               daemon=True)
    restart.start()
    try:
        meanwhile()
        restart.join(90)
        assert not restart.is_alive(), "the member did not come back"
        _until(lambda: (_names(Api(str(member.socket))) or set()) >= written, 30,
               "the member serves every acknowledged profile")
    finally:
        watch.stop.set()
        watch.join(10)
    assert watch.served, "the member never served"
    assert not watch.partial, f"served partial lists (served, acknowledged): {watch.partial}"
    return watch


def _log(member: DaemonProcess) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in [member.root / "daemon.stderr", *member.root.glob("*.log")]
                   if p.exists())


def test_a_follower_with_a_damaged_dump_rebuilds_and_a_damaged_dump_is_sent_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPACTION_ENV, str(COMPACT_EVERY))
    started = time.monotonic()
    with namespace_cluster(3) as members:
        directory: Path = members[0].root.parent
        leader = next(m for m in members if m.root.name == _leader(members[0]))
        follower = next(m for m in members if m is not leader)
        to_leader = Api(str(leader.socket))
        written: set[str] = set()
        _create(to_leader, [f"a{i}" for i in range(2 * COMPACT_EVERY)], written)
        snapshot = follower.root / "raft" / "snapshot"
        _until(snapshot.exists, 30, "a dump on the follower")

        # Its own dump truncated; a few writes meanwhile, so that the leader's log
        # still holds what the follower's journal lacks (it needs no dump to catch up).
        nemesis.kill(directory, follower.root.name)
        data = snapshot.read_bytes()
        snapshot.write_bytes(data[: len(data) // 2])
        _create(to_leader, [f"b{i}" for i in range(10)], written)
        _restart_watched(directory, follower, written)
        assert list((follower.root / "raft").glob("damaged-*/snapshot"))
        print(f"rebuilt from the leader: {time.monotonic() - started:.1f} s")

        # Down while the leader compacts past it: it needs the leader's dump, and the
        # first one it gets is damaged (the leader's file, as a hole would leave it).
        nemesis.kill(directory, follower.root.name)
        _create(to_leader, [f"c{i}" for i in range(2 * COMPACT_EVERY)], written)
        sent = leader.root / "raft" / "snapshot"
        damaged = bytearray(sent.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        sent.write_bytes(bytes(damaged))

        def compact_again() -> None:
            time.sleep(3)  # the follower refuses the damaged dump meanwhile
            _create(to_leader, [f"d{i}" for i in range(COMPACT_EVERY + 20)], written)

        _restart_watched(directory, follower, written, compact_again)
        log = _log(follower)
        assert "the received dump" in log and "does not load" in log, "no dump was refused"
        assert "failed to load full dump" not in log
    print(f"snapshot scenario: {time.monotonic() - started:.1f} s")
