"""The HA chaos driver: HA containers with counters on a real dev cluster, a host at a
time killed, cut off or frozen, everything recorded for the HA checker (``ha_checker``).

::

    sampler (a thread, every 100 ms)            faults, one after another (this thread)
      /proc: each [lxc monitor] ROOT/containers   kill-host  kill -9 of the whole host .. start
      NAME -> which hosts run NAME -> Sample      partition  cut off both ways ........ heal
                     \\                            pause      SIGSTOP of its daemon .... CONT
                      \\                           each on the host running the most HA
                       \\                          containers, held until they run elsewhere
                        \\                         (the API of a healthy member, and /proc)
                         +--> check(samples, failovers, returns) <--+
                                                  Failover: old host's last counter (its
                                                    rootfs, once the old copy is gone), the
                                                    new copy's starting value, interval,
                                                    detection (fault -> old copy gone)
                                                  Return: the host back (restarted, healed,
                                                    continued) until the next fault

Each container writes ``/counter`` every 100 ms from a loop its boot script starts
(``COUNTER``), so a promoted replica counts on from the value it holds; each boot appends
the value it starts from to ``/starts``. The counters are read on the hosts' disks
(``rootfs``), not through corral. After each fault the driver waits until the host is
ONLINE again, has removed its stale copies and every HA container has a replica shipped
under its current placement epoch, so the next fault finds a replica to promote.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devtools import nemesis
from devtools.harness import DaemonProcess
from tests.chaos.api import request
from tests.chaos.faults import Nemesis
from tests.chaos.ha_checker import Failover, Return, Sample

FAULTS = ("kill-host", "partition", "pause")
UNDONE = {"kill-host": "started again", "partition": "healed", "pause": "SIGCONT"}
INSTANCES = 3
IMAGE = "busybox"
PERIOD = 0.1  # seconds between two samples
FAILOVER_TIMEOUT = 60.0
BACK_TIMEOUT = 60.0
REPLICA_TIMEOUT = 60.0
COUNTER = """#!/bin/sh
# corral HA chaos: count every 100 ms in the rootfs, on from the value found at boot.
n=$(cat /counter 2>/dev/null)
case "$n" in ''|*[!0-9]*) n=0 ;; esac
echo "$n" >> /starts
while :; do
    n=$((n + 1))
    echo "$n" > /counter.new && mv /counter.new /counter
    sleep 0.1
done
"""
SETUP = ("printf '%s' \"$1\" > /counter.sh && chmod 755 /counter.sh && "
         "{ grep -v '^exit 0$' /etc/init.d/rcS; "
         "echo '/counter.sh </dev/null >/dev/null 2>&1 &'; echo 'exit 0'; } > /tmp/rcS && "
         "cat /tmp/rcS > /etc/init.d/rcS || exit 1; "
         "setsid /counter.sh </dev/null >/dev/null 2>&1 &")
"""Run as ``sh -c SETUP sh COUNTER`` in the container: the script, its line in the boot
script, and the first run now (a command sent to the background reads no stdin, so
the script comes as an argument)."""


# ---- pure parts ------------------------------------------------------------------------

def monitor_of(cmdline: str, roots: Mapping[Path, str]) -> tuple[str, str] | None:
    """``(member, container)`` of an ``[lxc monitor] ROOT/containers NAME`` command line
    (``roots``: CORRAL_DIR -> member), or None for any other process."""
    if not cmdline.startswith("[lxc monitor]"):
        return None
    words = cmdline.removeprefix("[lxc monitor]").split()
    if len(words) != 2 or not words[0].endswith("/containers"):
        return None
    member = roots.get(Path(words[0]).parent)
    return None if member is None else (member, words[1])


def pick_target(placement: Mapping[str, tuple[str, ...]], rng: random.Random) -> str | None:
    """The host running the most instances (ties drawn by ``rng``); None if none runs."""
    counts: dict[str, int] = {}
    for hosts in placement.values():
        for host in hosts:
            counts[host] = counts.get(host, 0) + 1
    if not counts:
        return None
    most = max(counts.values())
    return rng.choice(sorted(h for h, n in counts.items() if n == most))


def detection(samples: list[Sample], instance: str, host: str, since: float) -> float | None:
    """Seconds from ``since`` to the first sample that no longer shows ``instance`` on
    ``host`` (an upper bound of when the old copy stopped writing); None if none does."""
    for s in samples:
        if s.instance == instance and s.t >= since and host not in s.hosts:
            return s.t - since
    return None


# ---- the run ---------------------------------------------------------------------------

@dataclass
class HaRun:
    members: dict[str, DaemonProcess]
    instances: list[str]
    rng: random.Random
    samples: list[Sample] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    returns: list[Return] = field(default_factory=list)
    faults: int = 0
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)

    @property
    def directory(self) -> Path:
        return next(iter(self.members.values())).root.parent

    def note(self, line: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f} {line}")

    def placement(self) -> dict[str, tuple[str, ...]]:
        """The hosts each instance runs on in the newest sample."""
        with self.lock:
            return {s.instance: s.hosts for s in self.samples[-len(self.instances):]}

    def seen(self) -> list[Sample]:
        with self.lock:
            return list(self.samples)


def sample_loop(run: HaRun) -> None:
    """Every PERIOD: which hosts run each HA instance, from every ``[lxc monitor]``."""
    roots = {m.root: name for name, m in run.members.items()}
    while not run.stop.wait(PERIOD):
        running: dict[str, set[str]] = {name: set() for name in run.instances}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            found = monitor_of(raw.replace(b"\0", b" ").decode(errors="replace").strip(), roots)
            if found is not None and found[1] in running:
                running[found[1]].add(found[0])
        now = time.monotonic()
        with run.lock:
            run.samples += [Sample(now, name, tuple(sorted(running[name])))
                            for name in run.instances]


def until(predicate: Callable[[], Any], timeout: float, period: float = 0.2) -> Any:
    """``predicate()``'s first true value, or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found or time.monotonic() > deadline:
            return found or None
        time.sleep(period)


def get(run: HaRun, path: str, avoid: str = "") -> Any:
    """``GET path`` from the first member other than ``avoid`` that answers 200."""
    for name in sorted(run.members, key=lambda n: (n == avoid, n)):
        if name == avoid:
            continue
        answer = request(run.members[name], "GET", path, timeout=5.0)
        if answer.status == 200:
            return answer.doc.get("metadata")
    return None


def instances_view(run: HaRun, avoid: str = "") -> dict[str, dict[str, Any]]:
    listing = get(run, "/1.0/instances?recursion=1", avoid) or []
    return {i["name"]: i for i in listing if i.get("name") in run.instances}


def member_statuses(run: HaRun, avoid: str = "") -> dict[str, str]:
    return {m["server_name"]: m.get("status", "")
            for m in get(run, "/1.0/cluster/members?recursion=1", avoid) or []}


def leader(run: HaRun) -> str:
    return next((m["server_name"] for m in get(run, "/1.0/cluster/members?recursion=1") or []
                 if "database-leader" in m.get("roles", [])), "")


def rootfs(member: DaemonProcess, name: str) -> Path | None:
    found = sorted(member.root.glob(f"storage-pools/*/containers/{name}/rootfs"))
    return found[0] if found else None


def read_int(member: DaemonProcess, name: str, file: str, last_line: bool = False) -> int | None:
    """A counter file of ``name`` on ``member``'s disk (None: absent or unreadable)."""
    base = rootfs(member, name)
    try:
        text = (base / file).read_text() if base is not None else ""
        lines = text.split()
        return int(lines[-1] if last_line else lines[0]) if lines else None
    except (OSError, ValueError):
        return None


def fresh_replicas(run: HaRun, since: float, avoid: str = "") -> list[str]:
    """The instances without a complete replica, on an ONLINE member other than theirs,
    shipped under their current epoch and after ``since`` (monotonic)."""
    view, statuses = instances_view(run, avoid), member_statuses(run, avoid)
    missing = []
    for name in run.instances:
        inst = view.get(name, {})
        ha = inst.get("ha") or {}
        if not any(r.get("snapshot") and r.get("epoch") == ha.get("epoch")
                   and r.get("member") != inst.get("location")
                   and statuses.get(r.get("member", "")) == "Online"
                   and r.get("lag") is not None and r["lag"] < time.monotonic() - since
                   for r in ha.get("replicas", [])):
            missing.append(name)
    return missing


def launch(run: HaRun) -> None:
    """One HA container with its counter per member (round robin), each replicated."""
    first = next(iter(run.members.values()))
    first.corral("image", "build", IMAGE, timeout=300)
    hosts = sorted(run.members)
    for i, name in enumerate(run.instances):
        first.corral("launch", IMAGE, name, "--target", hosts[i % len(hosts)],
                     "-c", "cluster.ha=restart", timeout=180)
        first.corral("exec", name, "--", "sh", "-c", SETUP, "sh", COUNTER, timeout=60)
    counting = time.monotonic()
    missing = until(lambda: fresh_replicas(run, counting) == [] or None, REPLICA_TIMEOUT)
    if missing is None:
        raise AssertionError(f"no replica shipped after the counters started: "
                             f"{fresh_replicas(run, counting)}")
    run.note(f"{len(run.instances)} HA containers counting, replicated: "
             f"{dict(sorted(run.placement().items()))}")


def inject(run: HaRun, kind: str, host: str) -> None:
    if kind == "kill-host":
        nemesis.kill(run.directory, host, "KILL", host=True)
    elif kind == "partition":
        nemesis.partition(run.directory, [host])
    else:
        nemesis.kill(run.directory, host, "STOP")


def undo(run: HaRun, kind: str, host: str) -> None:
    if kind == "kill-host":
        nemesis.start(run.directory, host)
    elif kind == "partition":
        nemesis.heal(run.directory)
    else:
        nemesis.kill(run.directory, host, "CONT")


def fault(run: HaRun, kind: str) -> None:
    """One fault on the host running the most HA containers (see the module docstring)."""
    placement = run.placement()
    host = pick_target(placement, run.rng)
    if host is None:
        run.problems.append(f"{kind}: no HA container runs anywhere: {placement}")
        return
    moving = sorted(name for name, hosts in placement.items() if host in hosts)
    view = instances_view(run)
    interval = {n: float((view.get(n, {}).get("ha") or {}).get("replication_interval", 5.0))
                for n in moving}
    role = "leader" if host == leader(run) else "follower"
    injected = time.monotonic()
    if run.returns:  # the previous returned host is judged until this fault
        run.returns[-1] = replace(run.returns[-1], until=injected)
    inject(run, kind, host)
    run.faults += 1
    run.note(f"{kind} {host} ({role}), which runs {', '.join(moving)}")
    try:
        for name in moving:
            run.failovers.append(follow(run, name, host, injected, interval[name]))
    finally:
        back = time.monotonic()  # from here on it may start what it has
        undo(run, kind, host)
    run.note(f"{host} back: {UNDONE[kind]}")
    run.returns.append(Return(host, tuple(moving), back, math.inf))
    if until(lambda: member_statuses(run, host).get(host) == "Online", BACK_TIMEOUT) is None:
        run.problems.append(f"{host} not ONLINE within {BACK_TIMEOUT:g} s of its return: "
                            f"{member_statuses(run, host)}")
    kept = until(lambda: not [n for n in moving if rootfs(run.members[host], n)] or None,
                 BACK_TIMEOUT)
    if kept is None:
        run.problems.append(f"{host} still has stale copies {BACK_TIMEOUT:g} s after its "
                            f"return: {[n for n in moving if rootfs(run.members[host], n)]}")
    shipped = time.monotonic()
    if until(lambda: fresh_replicas(run, shipped) == [] or None, REPLICA_TIMEOUT) is None:
        run.problems.append(f"no fresh replica {REPLICA_TIMEOUT:g} s after {host} came back: "
                            f"{fresh_replicas(run, shipped)}")
    run.note(f"{host} ONLINE, stale copies gone, replicas fresh")


def follow(run: HaRun, name: str, old: str, injected: float, interval: float) -> Failover:
    """Wait until ``name`` runs on another member (the API and /proc agree), then read
    the counters: the old copy's last write and the value the new copy started from."""
    def moved() -> str | None:
        inst = instances_view(run, old).get(name, {})
        where = inst.get("location", "")
        if where not in ("", old) and inst.get("status") == "Running" and (
                run.placement().get(name) == (where,)):
            return str(where)
        return None

    new = until(moved, FAILOVER_TIMEOUT)
    if new is None:
        run.problems.append(f"{name} not failed over off {old} within {FAILOVER_TIMEOUT:g} s: "
                            f"API {instances_view(run, old).get(name, {}).get('location')} "
                            f"{instances_view(run, old).get(name, {}).get('status')}, "
                            f"/proc {run.placement().get(name)}")
        return Failover(name, old, read_int(run.members[old], name, "counter"), None,
                        interval, time.monotonic() - injected)
    took = time.monotonic() - injected
    if until(lambda: old not in run.placement().get(name, (old,)), 20.0) is None:
        run.problems.append(f"{name}'s old copy still runs on {old} after its failover")
    last = read_int(run.members[old], name, "counter")
    first = read_int(run.members[new], name, "counter")
    resumed = None  # the new copy's boot line in /starts is written before it counts
    if until(lambda: read_int(run.members[new], name, "counter") != first, 10.0, 0.05):
        resumed = read_int(run.members[new], name, "starts", last_line=True)
    else:
        run.problems.append(f"{name}'s counter does not advance on {new} after its failover")
    stopped = detection(run.seen(), name, old, injected)
    record = Failover(name, old, last, resumed, interval,
                      took if stopped is None else stopped)
    run.note(f"{name}: {old} -> {new} in {took:.1f} s, wrote {last}, resumed from {resumed} "
             f"(lost {record.loss} ticks, bound {record.bound()}; old copy gone after "
             f"{record.detection:.1f} s)")
    return record


def play(members: list[DaemonProcess], rounds: int = 1, seed: int = 15) -> HaRun:
    """Launch the HA containers, inject each of FAULTS in turn (``rounds`` times), then
    stop sampling; every fault undone in the end, also on failure."""
    run = HaRun({m.root.name: m for m in members},
                [f"ha{i + 1}" for i in range(INSTANCES)], random.Random(seed))
    sampler = threading.Thread(target=sample_loop, args=(run,), daemon=True,
                               name="ha-chaos-sampler")
    sampler.start()
    try:
        launch(run)
        for kind in FAULTS * rounds:
            fault(run, kind)
        time.sleep(2.0)  # a last look at the returned host
    finally:
        end = time.monotonic()
        if run.returns:
            run.returns[-1] = replace(run.returns[-1], until=end)
        run.stop.set()
        sampler.join(10)
        restore = Nemesis(run.directory, sorted(run.members), lambda: None, run.rng)
        with contextlib.suppress(nemesis.NemesisError):
            run.log += [f"restore: {what}" for what in restore.restore()]
    return run
