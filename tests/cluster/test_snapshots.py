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

from cluster import nemesis
from cluster.harness import DaemonProcess
from cluster.state.raft import COMPACTION_ENV
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


def test_a_follower_with_a_damaged_dump_rebuilds_and_a_damaged_dump_is_sent_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPACTION_ENV, str(COMPACT_EVERY))
    started = time.monotonic()
    with namespace_cluster(3) as members:
        directory: Path = members[0].root.parent
        by_name = {m.root.name: m for m in members}
        leader = by_name[_leader(members[0])]
        follower = next(m for m in members if m is not leader)
        written: set[str] = set()
        _create(Api(str(leader.socket)), [f"a{i}" for i in range(2 * COMPACT_EVERY)], written)
        snapshot = follower.root / "raft" / "snapshot"
        _until(snapshot.exists, 30, "a dump on the follower")

        nemesis.kill(directory, follower.root.name)
        data = snapshot.read_bytes()
        snapshot.write_bytes(data[: len(data) // 2])  # truncated
        _create(Api(str(leader.socket)), [f"b{i}" for i in range(2 * COMPACT_EVERY)], written)
        # The next dump the leader sends arrives damaged (its file, as a dropped chunk
        # would leave it): it must be refused, and a good one sent later.
        sent = leader.root / "raft" / "snapshot"
        damaged = bytearray(sent.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        sent.write_bytes(bytes(damaged))

        watch = _Watch(Api(str(follower.socket)), written)
        watch.start()
        restart = threading.Thread(target=nemesis.start, args=(directory, follower.root.name),
                                   daemon=True)
        restart.start()
        try:
            time.sleep(3)  # the follower refuses the damaged dump meanwhile
            # Enough writes for the leader to compact again: a good dump to send.
            _create(Api(str(leader.socket)), [f"c{i}" for i in range(COMPACT_EVERY + 20)],
                    written)
            restart.join(90)
            assert not restart.is_alive(), "the follower did not come back"
            _until(lambda: (_names(Api(str(follower.socket))) or set()) >= written, 30,
                   "the follower has every acknowledged profile")
        finally:
            watch.stop.set()
            watch.join(10)
        assert watch.served, "the follower never served"
        assert not watch.partial, f"served partial lists (served, acknowledged): {watch.partial}"
        assert list((follower.root / "raft").glob("damaged-*/snapshot"))
        log = (follower.root / "daemon.stderr").read_text(errors="replace")
        log += "".join(p.read_text(errors="replace") for p in follower.root.glob("*.log"))
        assert "the received dump" in log and "does not load" in log, "no dump was refused"
    print(f"snapshot scenario: {time.monotonic() - started:.1f} s")
