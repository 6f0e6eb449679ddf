"""The dev-cluster parts of ``bench/state.py``: failover trials and steady leadership.

Both run on one real 3-member cluster in network namespaces (``devtools.devcluster``,
as ``corral dev-cluster up`` and the cluster tests make it); faults go through
``devtools.nemesis`` (kill -9 checks the pid is that member's daemon; start restarts
it on its own state). Leader changes are counted two ways: every member's Raft term
(``journal.meta``, raised by every election any member starts, won or not) before and
after, and the leader each member names, asked every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster.state.journal import MetaFile
from devtools import devcluster, nemesis
from devtools.harness import DaemonProcess
from tests.integration.api import UnixHTTPConnection

HOG = "while True: pass"


def call(sock: Path, method: str, path: str, body: Any = None,
         timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """One request on a member's unix socket; (599, {}) when it cannot be reached."""
    conn = UnixHTTPConnection(str(sock), timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    except (OSError, ValueError):
        return 599, {}
    finally:
        conn.close()


def leader_of(sock: Path) -> str | None:
    """The member that ``sock``'s member names as the Raft leader."""
    status, doc = call(sock, "GET", "/1.0/cluster/members?recursion=1", timeout=2.0)
    if status != 200:
        return None
    return next((m["server_name"] for m in doc.get("metadata") or []
                 if "database-leader" in m.get("roles", [])), None)


def write(sock: Path, timeout: float = 5.0) -> bool:
    status, _ = call(sock, "PATCH", "/1.0", {"config": {"user.bench": secrets.token_hex(4)}},
                     timeout)
    return status == 200


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def failover(directory: Path, socks: dict[str, Path], trials: int) -> list[float]:
    """Seconds from kill -9 of the leader to the first write accepted by another
    member, per trial; the killed member is restarted and takes a write between trials."""
    found = []
    for _ in range(trials):
        first = next(iter(socks.values()))
        wait_for(lambda s=first: leader_of(s) is not None, 30, "a leader")
        leader = leader_of(first)
        assert leader is not None
        other = socks[next(n for n in socks if n != leader)]
        killed = time.monotonic()
        nemesis.kill(directory, leader, "KILL")
        while not write(other):
            time.sleep(0.01)
        found.append(time.monotonic() - killed)
        nemesis.start(directory, leader)
        wait_for(lambda s=socks[leader]: write(s, 2.0), 60, f"{leader} to take writes again")
        time.sleep(1.0)  # its Raft peers reconnected: the next trial kills a full cluster
    return found


def terms(members: list[DaemonProcess]) -> list[int]:
    return [int(MetaFile(m.root / "raft" / "journal.meta").load().get("currentTerm", 0))
            for m in members]


def create_instances(socks: dict[str, Path], count: int) -> float:
    """``count`` real containers (busybox, stopped), created through the members' APIs
    8 at a time; the seconds it took."""
    entries = list(socks.values())

    def create(n: int) -> None:
        sock = entries[n % len(entries)]
        status, doc = call(sock, "POST", "/1.0/instances",
                           {"name": f"s{n}", "source": {"type": "image", "alias": "busybox"}},
                           timeout=120)
        if status >= 400:
            raise RuntimeError(f"create s{n}: {status} {doc.get('error')}")
        status, done = call(sock, "GET", f"{doc['operation']}/wait?timeout=120", timeout=130)
        if (done.get("metadata") or {}).get("status") != "Success":
            raise RuntimeError(f"create s{n}: {done}")

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    return time.monotonic() - started


class LeaderWatch(threading.Thread):
    """Asks every member for the leader every 0.2 s; counts changes each one sees."""

    def __init__(self, socks: dict[str, Path]) -> None:
        super().__init__(name="leader-watch", daemon=True)
        self._socks = socks
        self._halt = threading.Event()
        self.changes = dict.fromkeys(socks, 0)
        self.leaderless = 0  # answers that named no leader

    def run(self) -> None:
        last: dict[str, str | None] = {}
        while not self._halt.wait(0.2):
            for name, sock in self._socks.items():
                leader = leader_of(sock)
                if leader is None:
                    self.leaderless += 1
                    continue
                if last.get(name) not in (None, leader):
                    self.changes[name] += 1
                last[name] = leader

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def steady(members: list[DaemonProcess], socks: dict[str, Path], seconds: float) -> None:
    leader = leader_of(next(iter(socks.values())))
    assert leader is not None
    hogs: list[subprocess.Popen[bytes]] = []
    watch = LeaderWatch(socks)
    lists: list[float] = []
    try:
        before = terms(members)
        hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
        watch.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            status, _ = call(socks[leader], "GET", "/1.0/instances?recursion=1", timeout=60)
            if status == 200:
                lists.append(time.monotonic() - started)
        after = terms(members)
    finally:
        for hog in hogs:  # by PID: only the hogs this bench started
            hog.kill()
            hog.wait()
        watch.stop()
    elections = sum(b - a for a, b in zip(before, after, strict=True))
    changes = max(watch.changes.values())
    verdict = "met" if changes == 0 == elections else "NOT MET"
    print(f"{len(lists)} lists of the leader's instances in {seconds:g} s, median "
          f"{statistics.median(lists) * 1000:.0f} ms, max {max(lists) * 1000:.0f} ms; "
          f"2 CPU hogs (both cores)")
    print(f"Raft terms before {before} after {after}: {elections} term increases; leader "
          f"changes seen by the members {watch.changes}; answers with no leader "
          f"{watch.leaderless}   goal 0: {verdict}")


def cluster_parts(args: argparse.Namespace, failover_part: bool, steady_part: bool) -> None:
    directory = Path("/tmp") / f"corral-bench-state-{secrets.token_hex(3)}"
    try:
        started = time.monotonic()
        members = devcluster.up(3, directory)
        socks = {devcluster.member_name(i + 1): m.socket for i, m in enumerate(members)}
        print(f"## dev cluster: 3 members in network namespaces, up in "
              f"{time.monotonic() - started:.0f} s")
        if failover_part:
            found = failover(directory, socks, args.trials)
            print(f"leader kill -9 -> first accepted write, {len(found)} trials: median "
                  f"{statistics.median(found):.2f} s, max {max(found):.2f} s "
                  f"({', '.join(f'{s:.2f}' for s in found)})   goal median <= 1.5 s: "
                  f"{'met' if statistics.median(found) <= 1.5 else 'NOT MET'}")
        if steady_part:
            members[0].corral("image", "build", "busybox", timeout=300)
            took = create_instances(socks, args.instances)
            print(f"{args.instances} stopped busybox containers created in {took:.0f} s")
            steady(members, socks, args.seconds)
    finally:
        devcluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)
