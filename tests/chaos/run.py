"""The chaos suite's driver: clients that write and read through every member of a real
dev cluster while a nemesis injects faults, all recorded for the checker (``checker.py``).

::

    clients (threads, one per member, hopping)      nemesis (a thread)
      profiles as registers: read, CAS (If-Match)     kill -9 + start, SIGSTOP/CONT,
      profiles created and deleted                    leader isolated, a minority cut off
      server config keys written                      (cluster/nemesis.py)
               \\                                     /
                Recorder (history.py) --> final state of every member --> check()
                          cluster check (replicas agree), convergence after the last heal

An answer is ``ok`` on 2xx, ``fail`` on a 4xx (or a refused connection: nothing was
sent), and ``unknown`` on a timeout, a dropped connection or a 5xx: such a command may
still commit, and the checker lets it go either way.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import nemesis
from cluster.harness import DaemonProcess
from tests.chaos.history import Kind, Recorder, Value
from tests.integration.api import UnixHTTPConnection

REGISTERS = 3
REQUEST_TIMEOUT = 8.0


@dataclass
class Profile:
    """How long and how hard a run is."""

    seconds: float
    min_ops: int
    min_faults: int
    fault_every: float = 4.0
    seed: int = 7


SHORT = Profile(seconds=75, min_ops=200, min_faults=10)
LONG = Profile(seconds=600, min_ops=1000, min_faults=50)


@dataclass
class Answer:
    status: int  # 0: no answer
    doc: dict[str, Any]
    etag: str = ""
    refused: bool = False  # the connection was refused: nothing reached the member


def request(member: DaemonProcess, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> Answer:
    conn = UnixHTTPConnection(str(member.socket), timeout=REQUEST_TIMEOUT)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        doc = json.loads(raw) if raw.startswith(b"{") else {}
        return Answer(resp.status, doc, resp.getheader("ETag") or "")
    except (ConnectionRefusedError, FileNotFoundError):
        return Answer(0, {"error": "connection refused"}, refused=True)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Answer(0, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


@dataclass
class Run:
    members: list[DaemonProcess]
    profile: Profile
    recorder: Recorder = field(default_factory=Recorder)
    faults: int = 0
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

    def settle(self, op: int, answer: Answer, *, value: Any = ..., etag: str = "") -> None:
        """Record the outcome of ``op`` from ``answer`` (see the module docstring)."""
        with self.lock:
            if 200 <= answer.status < 300:
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
    """The registers, made before the clients start (their initial values recorded)."""
    first = run.members[0]
    for n in range(REGISTERS):
        answer = request(first, "POST", "/1.0/profiles",
                         {"name": register(n), "description": "v0"})
        assert answer.status < 300, answer.doc
        run.recorder.initial[f"profile/{register(n)}"] = "v0"


def client(run: Run, index: int) -> None:
    """One client: hops between members, mixes reads, CAS, creates, deletes and writes."""
    rng = random.Random(run.profile.seed * 100 + index)
    name, seq, mine = f"c{index}", 0, []
    while not run.stop.is_set():
        seq += 1
        member = run.members[(index + seq) % len(run.members)]
        choice = rng.random()
        if choice < 0.55:
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
    run.settle(op, request(member, "DELETE", f"/1.0/profiles/{name}"))


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
    """A fault every ``fault_every`` s, each undone before the next."""
    rng = random.Random(run.profile.seed)
    names = [m.root.name for m in run.members]
    faults: list[Callable[[], str]] = [
        lambda: _kill_and_start(run, rng.choice(names), rng),
        lambda: _kill_and_start(run, leader(run) or rng.choice(names), rng),
        lambda: _pause(run, rng.choice(names), rng),
        lambda: _cut_off(run, [leader(run) or rng.choice(names)], rng),
        lambda: _cut_off(run, [rng.choice(names)], rng),
    ]
    while not run.stop.wait(run.profile.fault_every * rng.uniform(0.5, 1.0)):
        try:
            what = rng.choice(faults)()
        except nemesis.NemesisError as exc:
            run.log.append(f"{time.monotonic():.1f} fault not injected: {exc}")
            continue
        run.faults += 1
        run.log.append(f"{time.monotonic():.1f} {what}")


def _kill_and_start(run: Run, name: str, rng: random.Random) -> str:
    nemesis.kill(run.directory, name, "KILL")
    time.sleep(rng.uniform(1.0, 3.0))
    nemesis.start(run.directory, name)
    return f"kill -9 {name}, started again"


def _pause(run: Run, name: str, rng: random.Random) -> str:
    nemesis.kill(run.directory, name, "STOP")
    time.sleep(rng.uniform(3.0, 6.0))
    nemesis.kill(run.directory, name, "CONT")
    return f"SIGSTOP {name}, CONT"


def _cut_off(run: Run, names: list[str], rng: random.Random) -> str:
    nemesis.partition(run.directory, names)
    time.sleep(rng.uniform(3.0, 6.0))
    nemesis.heal(run.directory)
    return f"partition {','.join(names)}, healed"


def final_state(member: DaemonProcess) -> dict[str, Value]:
    """Every key the suite touches, as this member's replica has it (a fresh read)."""
    state: dict[str, Value] = {}
    profiles = request(member, "GET", "/1.0/profiles?recursion=1")
    assert profiles.status == 200, profiles.doc
    for profile in profiles.doc["metadata"]:
        state[f"profile/{profile['name']}"] = profile.get("description", "")
    server = request(member, "GET", "/1.0")
    for key, value in server.doc.get("metadata", {}).get("config", {}).items():
        if key.startswith("user.chaos"):
            state[f"config/{key}"] = value
    return state


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


def replicas_agree(member: DaemonProcess) -> bool:
    out = member.corral("cluster", "check", "--format", "json", "--timeout", "30",
                        check=False, timeout=60)
    return out.returncode == 0 and bool(json.loads(out.stdout or b"{}").get("agree"))


def play(members: list[DaemonProcess], profile: Profile, clients: int = 3) -> Run:
    """Run the clients and the nemesis for ``profile.seconds`` (and until its minimum
    ops and faults), then stop, heal, and start every member again."""
    run = Run(members, profile)
    setup(run)
    threads = [threading.Thread(target=client, args=(run, i), daemon=True)
               for i in range(clients)]
    chaos = threading.Thread(target=nemesis_loop, args=(run,), daemon=True)
    for thread in (*threads, chaos):
        thread.start()
    deadline = time.monotonic() + profile.seconds
    while time.monotonic() < deadline or (
            run.faults < profile.min_faults and time.monotonic() < deadline + 120):
        time.sleep(0.5)
    run.stop.set()
    for thread in (*threads, chaos):
        thread.join(60)
    nemesis.heal(run.directory)
    for member in members:
        try:
            nemesis.kill(run.directory, member.root.name, "CONT")
        except nemesis.NemesisError:  # killed, not yet started
            nemesis.start(run.directory, member.root.name)
    return run
