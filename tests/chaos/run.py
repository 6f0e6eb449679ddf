"""The chaos suite's driver: clients that write and read through every member of a real
dev cluster while a nemesis injects faults, all recorded for the checker (``checker.py``).

::

    clients (threads, hopping between members)     nemesis (a thread, faults.py)
      profiles as registers: read, CAS (If-Match)     kill -9 + start, SIGSTOP/CONT,
      profiles created and deleted                    partitions (leader, follower,
      server config keys written                      one-way, minority, majority),
      containers created, started, stopped,           journal/snapshot damaged, a full
        deleted (instances.py)                        disk, a clock 30 s off
               \\                                     /
                Recorder (history.py) --> final state of every member --> check()
                          cluster check (replicas agree), convergence after the last heal

An answer is ``ok`` on 2xx, ``fail`` on a 4xx (or a refused connection: nothing was
sent), and ``unknown`` on a timeout, a dropped connection or a 5xx: such a command may
still commit, and the checker lets it go either way.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools import nemesis
from devtools.harness import DaemonProcess
from tests.chaos import instances
from tests.chaos.api import Answer, request
from tests.chaos.faults import KINDS, Nemesis
from tests.chaos.history import Kind, Recorder, Value

REGISTERS = 3


@dataclass
class Profile:
    """How long and how hard a run is; ``instances``: the share of client steps that
    are container operations (slow on 2 cores: a create unpacks an image)."""

    seconds: float
    min_ops: int
    min_faults: int
    fault_every: float = 4.0
    seed: int = 7
    instances: float = 0.02
    clients: int = 3


SHORT = Profile(seconds=80, min_ops=200, min_faults=len(KINDS), fault_every=2.0)
LONG = Profile(seconds=420, min_ops=1000, min_faults=50, fault_every=2.0, instances=0.06)


@dataclass
class Run:
    members: list[DaemonProcess]
    profile: Profile
    recorder: Recorder = field(default_factory=Recorder)
    faults: int = 0
    nemesis: Nemesis | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    log: list[str] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return self.members[0].root.parent

    def invoke(self, client: str, kind: Kind, key: str, member: DaemonProcess,
               **kw: Value) -> int:
        with self.lock:
            return self.recorder.invoke(client, kind, key, member=member.root.name, **kw)

    def settle(self, op: int, answer: Answer, *, value: Any = ..., etag: str = "",
               absent: str | None = None) -> None:
        """Record the outcome of ``op`` from ``answer`` (see the module docstring).
        ``absent``: the key of which a 404 is a read of *absent* (``Recorder.absent``)."""
        with self.lock:
            if answer.status == 404 and absent is not None:
                self.recorder.absent(op, absent)
            elif 200 <= answer.status < 300:
                if value is ...:
                    self.recorder.ok(op, etag=etag or None)
                else:
                    self.recorder.ok(op, value=value, etag=etag or None)
            elif 400 <= answer.status < 500 or answer.refused:
                self.recorder.fail(op, f"{answer.status} {answer.doc.get('error', '')}")
            else:
                self.recorder.unknown(op, f"{answer.status} {answer.doc.get('error', '')}")


def register(n: int) -> str:
    return f"reg{n}"


def setup(run: Run) -> None:
    """The registers, made before the clients start (their initial values recorded), and
    the container image when the profile runs containers."""
    first = run.members[0]
    if run.profile.instances:
        first.corral("image", "build", instances.IMAGE, timeout=300)
    for n in range(REGISTERS):
        answer = request(first, "POST", "/1.0/profiles",
                         {"name": register(n), "description": "v0"})
        assert answer.status < 300, answer.doc
        run.recorder.initial[f"profile/{register(n)}"] = "v0"


def client(run: Run, index: int) -> None:
    """One client: hops between members, mixes reads, CAS, creates, deletes and writes,
    and now and then a container operation."""
    rng = random.Random(run.profile.seed * 100 + index)
    name, seq, mine = f"c{index}", 0, list[str]()
    containers = instances.Instances(name)
    while not run.stop.is_set():
        seq += 1
        member = run.members[(index + seq) % len(run.members)]
        choice = rng.random()
        if rng.random() < run.profile.instances:
            instances.step(run, containers, seq, member, rng)
        elif choice < 0.55:
            _read_then_cas(run, name, seq, member, rng)
        elif choice < 0.75 or not mine:
            mine.append(_create(run, name, seq, member))
        elif choice < 0.85:
            _delete(run, name, member, mine.pop(rng.randrange(len(mine))))
        else:
            _write_config(run, name, seq, member, rng)


def _read_then_cas(run: Run, client: str, seq: int, member: DaemonProcess,
                   rng: random.Random) -> None:
    reg = register(rng.randrange(REGISTERS))
    key = f"profile/{reg}"
    op = run.invoke(client, Kind.READ, key, member)
    got = request(member, "GET", f"/1.0/profiles/{reg}")
    seen = got.doc.get("metadata", {}).get("description") if got.status == 200 else None
    run.settle(op, got, value=seen, etag=got.etag)
    if got.status != 200 or not got.etag:
        return
    value = f"{client}-{seq}"
    other = run.members[rng.randrange(len(run.members))]  # often another member
    op = run.invoke(client, Kind.CAS, key, other, value=value, expected=seen)
    answer = request(other, "PUT", f"/1.0/profiles/{reg}",
                     {"description": value, "config": {}, "devices": {}},
                     {"If-Match": got.etag})
    run.settle(op, answer)


def _create(run: Run, client: str, seq: int, member: DaemonProcess) -> str:
    name = f"p-{client}-{seq}"
    op = run.invoke(client, Kind.CREATE, f"profile/{name}", member, value=f"{client}-{seq}")
    run.settle(op, request(member, "POST", "/1.0/profiles",
                           {"name": name, "description": f"{client}-{seq}"}))
    return name


def _delete(run: Run, client: str, member: DaemonProcess, name: str) -> None:
    op = run.invoke(client, Kind.DELETE, f"profile/{name}", member)
    run.settle(op, request(member, "DELETE", f"/1.0/profiles/{name}"),
               absent=f"profile/{name}")


def _write_config(run: Run, client: str, seq: int, member: DaemonProcess,
                  rng: random.Random) -> None:
    key = f"user.chaos{rng.randrange(3)}"
    value = f"{client}-{seq}"
    op = run.invoke(client, Kind.WRITE, f"config/{key}", member, value=value)
    run.settle(op, request(member, "PATCH", "/1.0", {"config": {key: value}}))


def leader(run: Run) -> str | None:
    for member in run.members:
        answer = request(member, "GET", "/1.0/cluster/members?recursion=1")
        if answer.status == 200:
            for m in answer.doc.get("metadata", []):
                if "database-leader" in m.get("roles", []):
                    return str(m["server_name"])
    return None


def nemesis_loop(run: Run) -> None:
    """A fault every ``fault_every`` s (at most), each undone before the next."""
    rng = random.Random(run.profile.seed)
    assert run.nemesis is not None
    while not run.stop.wait(run.profile.fault_every * rng.uniform(0.5, 1.0)):
        kind = run.nemesis.next_kind()
        try:
            what = run.nemesis.inject(kind)
        except nemesis.NemesisError as exc:
            run.log.append(f"{time.monotonic():.1f} {kind} not injected: {exc}")
            continue
        run.faults += 1
        run.log.append(f"{time.monotonic():.1f} {what}")


def _get(member: DaemonProcess, path: str, timeout: float) -> dict[str, Any]:
    """GET ``path`` until it answers 200 (a member that is catching up answers 503 for
    a while); AssertionError with the last answer after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        answer = request(member, "GET", path)
        if answer.status == 200:
            return answer.doc
        if time.monotonic() > deadline:
            raise AssertionError(f"{member.root.name} GET {path}: {answer.status} "
                                 f"{answer.doc.get('error', '')}")
        time.sleep(0.5)


def final_state(member: DaemonProcess, timeout: float = 30.0) -> dict[str, Value]:
    """Every key the suite touches, as this member's replica has it (a fresh read)."""
    state: dict[str, Value] = {}
    for profile in _get(member, "/1.0/profiles?recursion=1", timeout)["metadata"]:
        state[f"profile/{profile['name']}"] = profile.get("description", "")
    server = _get(member, "/1.0", timeout)
    for key, value in server.get("metadata", {}).get("config", {}).items():
        if key.startswith("user.chaos"):
            state[f"config/{key}"] = value
    listing = _get(member, "/1.0/instances?recursion=1", timeout)
    state.update(instances.final_instances(listing["metadata"]))
    return state


def final_states(members: list[DaemonProcess]) -> tuple[dict[str, dict[str, Value]],
                                                         list[str]]:
    """Each member's final state, and why a member gave none (it then fails the run,
    but the history of the others is still judged and kept)."""
    states, problems = {}, []
    for member in members:
        try:
            states[member.root.name] = final_state(member)
        except AssertionError as exc:
            problems.append(f"{member.root.name} did not serve its state: {exc}")
    return states, problems


def converge(run: Run, timeout: float = 30.0) -> float | None:
    """Seconds until every member accepts a write after the last heal (None: never)."""
    started = time.monotonic()
    pending = list(run.members)
    while pending and time.monotonic() - started < timeout:
        member = pending[0]
        answer = request(member, "PATCH", "/1.0", {"config": {"user.converged": member.root.name}})
        if answer.status < 300:
            pending.pop(0)
        else:
            time.sleep(0.1)
    return None if pending else time.monotonic() - started


def roll_call(run: Run) -> list[str]:
    """How each member sees the cluster (for the log of a run that did not converge):
    its answer to ``GET /1.0/cluster/members``, roles and statuses."""
    seen = []
    for member in run.members:
        answer = request(member, "GET", "/1.0/cluster/members?recursion=1")
        if answer.status != 200:
            seen.append(f"{member.root.name}: {answer.status} {answer.doc.get('error', '')}")
            continue
        view = ", ".join(f"{m['server_name']} {m.get('status')} {'/'.join(m.get('roles', []))}"
                         for m in answer.doc.get("metadata", []))
        seen.append(f"{member.root.name} sees: {view}")
    return seen


def replicas_agree(member: DaemonProcess) -> bool:
    out = member.corral("cluster", "check", "--format", "json", "--timeout", "30",
                        check=False, timeout=60)
    return out.returncode == 0 and bool(json.loads(out.stdout or b"{}").get("agree"))


def play(members: list[DaemonProcess], profile: Profile) -> Run:
    """Run the clients and the nemesis for ``profile.seconds`` (and until its minimum
    ops and faults), then stop and undo every fault (also when this fails)."""
    run = Run(members, profile)
    run.nemesis = Nemesis(run.directory, [m.root.name for m in members],
                          lambda: leader(run), random.Random(profile.seed))
    try:
        setup(run)
        threads = [threading.Thread(target=client, args=(run, i), daemon=True,
                                    name=f"chaos-client-{i}")
                   for i in range(profile.clients)]
        chaos = threading.Thread(target=nemesis_loop, args=(run,), daemon=True,
                                 name="chaos-nemesis")
        for thread in (*threads, chaos):
            thread.start()
        deadline = time.monotonic() + profile.seconds
        while time.monotonic() < deadline or (
                (run.faults < profile.min_faults
                 or run.recorder.invoked < profile.min_ops)
                and time.monotonic() < deadline + max(120.0, profile.seconds / 2)):
            time.sleep(0.5)
    finally:
        run.stop.set()
        for thread in threading.enumerate():
            if thread.name.startswith(("chaos-client", "chaos-nemesis")):
                thread.join(90)
        run.log += [f"restore: {what}" for what in run.nemesis.restore()]
    return run
