"""The simulator's Raft mode: three ``RaftStore`` voters on loopback, one per process.

::

    parent (run_raft)                       voter processes (spawned), each a RaftStore
    -----------------                       -------------------------------------------
    free loopback ports, temp journal dirs
    "leader"   to each                 -->  does this voter lead?
    "setup"    to the (first) planner  -->  the commands that build the simulated cluster
    "run"      to each planner voter   -->  the planner: plans its share with the
                                            IndexedScheduler, submits plans of placements
                                            (instance.create_many) with many in flight
    "reach"    to each, until equal    -->  wait until this index is applied; the index
    "settle"   to each                 -->  wait until the last command is applied; state
                                            digest, RSS, CPU time, log compacted or not
    "snapshot" to the most up to date  -->  pickle / unpickle the State; gzip full dump
    "stop"     to each                 -->  RaftStore.close(), exit
    removes the temp dir, kills any voter process still running

One process per voter: three replicas applying every command in one process would share one
interpreter lock, so at most one of the two cores. The planner runs in a follower's process
by default (as the API does on a member that is not the leader: pysyncobj forwards its
commands); with the planner in the leader's process the rate was the same within noise and
the leader's Raft thread competes with planning. With ``followers`` each follower's process
plans half the instances with its own view, as two members taking API requests would; their
conflicting plans are refused by apply and planned again. A voter process exits, removing the
journals, when the parent process dies (even by SIGKILL). ``RaftOptions.what_if`` overrides
pysyncobj settings in these processes only, to measure a change before making it.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import gzip
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pysyncobj import SyncObjConf

from cluster.state import raft, reservations
from cluster.state.errors import Conflict, StateError, Unavailable
from cluster.state.raft import BATCH, RaftStore
from scheduler.fake_driver import FakeDriver, SimInstance
from scheduler.request import PlacementRequest
from scheduler.resources import ZERO
from scheduler.sim_workload import (
    REPLAN_ATTEMPTS,
    Placer,
    Report,
    Tally,
    create_command,
    create_many_command,
    setup_phases,
    state_digest,
)
from scheduler.view import view_from_state

VOTERS = 3
DEFAULT_WINDOW = 8 * BATCH  # placements in flight
DEFAULT_PLAN_SIZE = 256  # placements per instance.create_many command
SETUP_CHUNK = 4000  # setup commands in flight
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2)
PROGRESS_SECONDS = 10.0
SETTLE_ROUNDS = 3  # re-samplings of the replicas' indexes before their digests are taken
FREEZE_PERIOD = 1.0  # seconds between gc.freeze() calls with --gc freeze
GC_MODES = ("default", "freeze")
PLANNER_ON = "follower"  # see the module docstring


# -- the voter process -------------------------------------------------------------------


class _Warnings(logging.Handler):
    """Counts pysyncobj's warnings (e.g. log entries truncated, dumps that failed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


WARNINGS = _Warnings()


def voter_main(conn: Connection, index: int, addresses: list[str], root: str,
               gc_mode: str = "default", what_if: dict[str, Any] | None = None) -> None:
    """Entry point of a voter process: serve the parent's requests until "stop"."""
    _die_with_parent(root)
    logging.basicConfig(format=f"voter{index} %(name)s %(levelname)s: %(message)s")
    logging.getLogger().addHandler(WARNINGS)
    if what_if:
        _override_raft_conf(what_if)
    asyncio.run(_serve(conn, index, addresses, Path(root), gc_mode))


def _die_with_parent(root: str) -> None:
    """Exit, removing the run's journals, when the simulator process dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``); also what ``terminate()`` does."""

    def on_term(signum: int, frame: object) -> None:
        shutil.rmtree(root, ignore_errors=True)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: a voter outlives a killed parent until its next request
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid != os.getppid():
        on_term(signal.SIGTERM, None)  # the parent died before prctl took effect


def _override_raft_conf(settings: dict[str, Any]) -> None:
    """``RaftOptions.what_if``: this voter process's ``raft_conf`` with ``settings`` on top
    (RaftStore.start reads the module's ``raft_conf``). Simulator processes only."""
    original = raft.raft_conf

    def conf(journal_dir: Path, password: str | None = None,
             dump: Any = None) -> SyncObjConf:
        found = original(journal_dir, password, dump)
        for key, value in settings.items():
            setattr(found, key, value)
        return found

    raft.raft_conf = conf


async def _freeze_often() -> None:
    """``--gc freeze``: move every object alive into the permanent generation each second,
    so the cyclic collector only ever scans what the last second allocated (a full
    collection of millions of replicated records takes seconds, and blocks Raft)."""
    while True:
        gc.freeze()
        await asyncio.sleep(FREEZE_PERIOD)


async def _serve(conn: Connection, index: int, addresses: list[str], root: Path,
                 gc_mode: str) -> None:
    address = addresses[index]
    journal = root / f"voter{index}"
    store = RaftStore(address, [a for a in addresses if a != address], journal)
    await store.start()
    freezer = asyncio.create_task(_freeze_often()) if gc_mode == "freeze" else None
    ops: dict[str, Callable[[RaftStore, Path, Any], Awaitable[Any]]] = {
        "leader": _is_leader, "setup": _setup, "run": _run, "settle": _settle,
        "reach": _reach,
        "state": _state, "snapshot": _snapshot}
    try:
        conn.send(("ready", address))
        while True:
            try:
                op, arg = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):
                return  # the parent is gone
            if op == "stop":
                return
            try:
                conn.send((op, await ops[op](store, journal, arg)))
            except Exception:  # noqa: BLE001 - reported to the parent, which raises it
                conn.send(("error", traceback.format_exc()))
    finally:
        if freezer is not None:
            freezer.cancel()
        await store.close()


async def _is_leader(store: RaftStore, journal: Path, arg: Any) -> bool:
    return store.leader() == store.address


async def _setup(store: RaftStore, journal: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Build the simulated cluster (members, image) through Raft."""
    driver = FakeDriver(params["seed"])
    started = time.perf_counter()
    for phase in setup_phases(driver.members(params["members"]), time.time()):
        for first in range(0, len(phase), SETUP_CHUNK):
            await asyncio.gather(*(store.submit(cmd)
                                   for cmd in phase[first:first + SETUP_CHUNK]))
    with store.read() as state:
        return {"setup": time.perf_counter() - started, "index": state.index}


async def _run(store: RaftStore, journal: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Place this planner's share of the instances through Raft (in the voter process it
    runs in): those whose index is ``share[0]`` modulo ``share[1]``, once this replica
    holds the cluster that ``setup`` built."""
    await _settle(store, journal, params["after"])
    driver = FakeDriver(params["seed"])
    mine, planners = params["share"]
    with store.read() as state:
        profile = Placer.default_profile(state)
        placers = [Placer(view_from_state(state, time.time()), profile)
                   for _ in range(params["planners"])]
    tally = Tally(where={} if params["record"] else None)
    pipeline = _Pipeline(store, placers, tally, params["window"], params["plan_size"])
    started = time.perf_counter()
    await pipeline.place_all(spec for spec in driver.instances(params["instances"])
                             if spec.index % planners == mine)
    seconds = time.perf_counter() - started
    with store.read() as state:
        pipeline.reconcile(state.instances)
        index = state.index
    return {"tally": tally.as_dict(), "seconds": seconds, "index": index,
            "leader_changes": pipeline.leader_changes}


@dataclass(frozen=True)
class _Planned:
    """A placement planned and counted in its planner's view, not committed yet."""

    placer: Placer
    spec: SimInstance
    request: PlacementRequest
    member: str


class _Pipeline:
    """Plans in order and keeps up to ``window`` placements in flight, ``plan_size`` to a
    command: one ``instance.create_many`` per plan (``instance.create`` when 1).

    Each plan is counted in its planner's view before its command commits (so the next
    plans see it); a placement apply refuses is released, the member refreshed from the
    committed state, and the instance planned again (then alone, in ``instance.create``).
    """

    def __init__(self, store: RaftStore, placers: list[Placer], tally: Tally,
                 window: int, plan_size: int = 1) -> None:
        self.store = store
        self.placers = placers
        self.tally = tally
        self.plan_size = max(1, plan_size)
        self.window = asyncio.Semaphore(max(1, window // self.plan_size))
        # Outcome unknown (Unavailable after RaftStore's retries): looked up at the end in
        # this replica, once every command in flight has returned.
        self.unknown: dict[str, str] = {}
        self.leader = store.leader()
        self.leader_changes = 0
        self.shown = (time.monotonic(), 0)  # when progress was last shown, placed then

    def _watch(self, planned: int, in_flight: int) -> None:
        """Count leader changes; every ``PROGRESS_SECONDS``, a progress line on stderr."""
        leader = self.store.leader()
        if leader != self.leader:
            self.leader, self.leader_changes = leader, self.leader_changes + 1
        now = time.monotonic()
        if now - self.shown[0] >= PROGRESS_SECONDS:
            rate = (self.tally.placed - self.shown[1]) / (now - self.shown[0])
            print(f"[simulate] planned {planned}, committed {self.tally.placed}, commands in "
                  f"flight {in_flight}, refused {len(self.tally.refused)}, re-planned "
                  f"{self.tally.replanned}, {rate:.0f}/s; leader {leader} "
                  f"({self.leader_changes} changes)", file=sys.stderr, flush=True)
            self.shown = (now, self.tally.placed)

    async def place_all(self, specs: Iterable[SimInstance]) -> None:
        tasks: set[asyncio.Task[None]] = set()
        plan: list[_Planned] = []
        for spec in specs:
            placer = self.placers[spec.index % len(self.placers)]
            request = placer.request(spec)
            found = placer.place(request)
            if found.member is None:
                self.tally.refuse(spec.name, found.error)
                continue
            placer.commit(found.member, request)
            plan.append(_Planned(placer, spec, request, found.member))
            if len(plan) >= self.plan_size:
                await self._send(plan, tasks)
                plan = []
            if spec.index % 256 == 255:
                self._watch(spec.index + 1, len(tasks))
                await asyncio.sleep(0)  # let the commands go out while planning continues
        if plan:
            await self._send(plan, tasks)
        if tasks:
            await asyncio.gather(*tasks)

    async def _send(self, plan: list[_Planned], tasks: set[asyncio.Task[None]]) -> None:
        await self.window.acquire()
        one = plan[0]
        task = asyncio.create_task(self._commit_plan(plan) if len(plan) > 1 else
                                   self._commit(one.placer, one.spec, one.request, one.member))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _commit_plan(self, plan: list[_Planned]) -> None:
        """Commit a plan in one command; each refused placement goes on alone."""
        try:
            results = await self.store.submit(
                create_many_command([(p.spec, p.member) for p in plan]))
        except Unavailable as exc:
            for planned in plan:
                self.unknown[planned.spec.name] = f"outcome unknown: {exc}"
            self.window.release()
            return
        except StateError as exc:
            for planned in plan:
                planned.placer.release(planned.member, planned.request)
                self.tally.refuse(planned.spec.name, str(exc))
            self.window.release()
            return
        self.window.release()
        retries = []
        for planned, result in zip(plan, results, strict=True):
            if result.ok:
                self.tally.place(planned.spec.name, planned.member)
                continue
            planned.placer.release(planned.member, planned.request)
            if "no longer fits" not in result.error:
                self.tally.refuse(planned.spec.name, result.error)
                continue
            self.tally.replanned += 1
            member = self._replan(planned.placer, planned.request, planned.member)
            if member is not None:
                retries.append(self._retry(planned.placer, planned.spec, planned.request,
                                           member))
        await asyncio.gather(*retries)

    async def _retry(self, placer: Placer, spec: SimInstance, request: PlacementRequest,
                     member: str) -> None:
        await self.window.acquire()
        await self._commit(placer, spec, request, member, first_attempt=1)

    async def _commit(self, placer: Placer, spec: SimInstance, request: PlacementRequest,
                      member: str, first_attempt: int = 0) -> None:
        """Commit one placement, planning it again while apply refuses it (at most
        ``REPLAN_ATTEMPTS`` plans in all); releases a window slot at the end."""
        try:
            for attempt in range(first_attempt, REPLAN_ATTEMPTS):
                try:
                    await self.store.submit(create_command(spec, member, attempt))
                except Conflict as exc:
                    placer.release(member, request)
                    if "no longer fits" not in str(exc):
                        self.tally.refuse(spec.name, str(exc))
                        return
                    self.tally.replanned += 1
                    found = self._replan(placer, request, member)
                    if found is None:
                        return
                    member = found
                    continue
                self.tally.place(spec.name, member)
                return
            placer.release(member, request)
            self.tally.refuse(spec.name, f"apply refused {REPLAN_ATTEMPTS} plans in a row")
        except Unavailable as exc:
            self.unknown[spec.name] = f"outcome unknown: {exc}"
        except StateError as exc:
            placer.release(member, request)
            self.tally.refuse(spec.name, str(exc))
        finally:
            self.window.release()

    def _replan(self, placer: Placer, request: PlacementRequest, refused: str) -> str | None:
        with self.store.read() as state:
            placer.refresh(refused, reservations.totals(state).get(refused, ZERO))
        plan = placer.place(request)
        if plan.member is None:
            self.tally.refuse(request.name, plan.error)
            return None
        placer.commit(plan.member, request)
        return plan.member

    def reconcile(self, instances: dict[str, Any]) -> None:
        """Settle the commands whose outcome was unknown against the committed state."""
        for name, reason in self.unknown.items():
            found = instances.get(name)
            if found is not None:
                self.tally.place(name, found.location)
            else:
                self.tally.refuse(name, reason)


async def _settle(store: RaftStore, journal: Path, index: int) -> dict[str, Any]:
    """Wait until this replica applied the leader's last command; its figures."""
    await _reach(store, journal, index)
    with store.read() as state:
        return {"index": state.index, "digest": state_digest(state), "rss": _rss(),
                "compacted": (journal / "snapshot").exists(),
                "warnings": WARNINGS.count, "cpu": _cpu_seconds()}


async def _reach(store: RaftStore, journal: Path, index: int) -> int:
    """Wait (up to ``SETTLE_TIMEOUT``) until this replica applied ``index``; its index."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        with store.read() as state:
            if state.index >= index or time.monotonic() > deadline:
                return state.index
        await asyncio.sleep(0.05)


async def _state(store: RaftStore, journal: Path, arg: Any) -> Any:
    with store.read() as state:
        return state


async def _snapshot(store: RaftStore, journal: Path, arg: Any) -> dict[str, float]:
    """Time a snapshot of the State and its restore: in memory with pickle, and as a file
    written the way pysyncobj's log compaction writes its full dump (pickle into gzip)."""
    figures: dict[str, float] = {}
    with store.read() as state:
        started = time.perf_counter()
        blob = pickle.dumps(state)
        figures["pickle"] = time.perf_counter() - started
        figures["pickle bytes"] = len(blob)
        started = time.perf_counter()
        restored = pickle.loads(blob)
        figures["unpickle"] = time.perf_counter() - started
        del blob
        if restored.index != state.index or len(restored.instances) != len(state.instances):
            raise RuntimeError("the restored State differs from the original")
        del restored
        dump = journal / "simulated-full-dump"
        started = time.perf_counter()
        with open(dump, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as packed:
            pickle.dump(state, packed)
        figures["gzip dump (as log compaction)"] = time.perf_counter() - started
    figures["gzip dump bytes"] = dump.stat().st_size
    started = time.perf_counter()
    with open(dump, "rb") as source, gzip.GzipFile(fileobj=source, mode="rb") as unpacked:
        pickle.load(unpacked)
    figures["gzip load (restart)"] = time.perf_counter() - started
    dump.unlink()
    return figures


def _cpu_seconds() -> float:
    """CPU time (user and system) this process has used so far."""
    times = os.times()
    return times.user + times.system


def _rss() -> int:
    """Resident memory of this process in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- the parent ------------------------------------------------------------------------


@dataclass
class _Voter:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: Connection

    def call(self, op: str, arg: Any = None, timeout: float | None = None) -> Any:
        """Send a request and wait for its answer (``timeout`` None: as long as the voter
        process lives)."""
        self.conn.send((op, arg))
        return self.expect(op, timeout)

    def expect(self, op: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.process.is_alive():
                raise RuntimeError(f"voter {self.index} exited (code {self.process.exitcode})")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"voter {self.index} did not answer {op!r} in {timeout} s")
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"voter {self.index} failed {op!r}:\n{value}")
        return value


def free_ports(count: int) -> list[int]:
    """Loopback ports free now (bound to port 0, then released for pysyncobj to bind)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass(frozen=True)
class RaftOptions:
    """How the Raft run is driven. ``what_if`` overrides ``SyncObjConf`` settings of
    ``cluster.state.raft.raft_conf`` in the voter processes: an experiment to measure a
    settings change before making it, never the daemon's configuration."""

    planners: int = 1  # planners with their own views (their conflicts exercise re-planning)
    window: int = DEFAULT_WINDOW  # placements in flight
    plan_size: int = DEFAULT_PLAN_SIZE  # placements per command (instance.create_many)
    # The voter process(es) planning: "follower", "leader", or "followers" (both, each
    # planning half the instances, as API requests arriving at two members would).
    planner_on: str = PLANNER_ON
    gc_mode: str = "default"  # one of GC_MODES
    what_if: dict[str, Any] = field(default_factory=dict)


def run_raft(members: int, instances: int, seed: int = 0,
             options: RaftOptions | None = None, *, snapshot: bool = False,
             record: bool = False, keep_states: bool = False) -> Report:
    """Place ``instances`` on ``members`` through a 3-voter Raft cluster (see the module
    docstring). ``record`` keeps where each instance went, ``keep_states`` returns the
    three final States (small runs only). Raises ``RuntimeError`` if a voter fails,
    ``ValueError`` for an unknown ``what_if`` setting."""
    options = options or RaftOptions()
    unknown = set(options.what_if) - set(vars(SyncObjConf()))
    if unknown:
        raise ValueError(f"not pysyncobj settings: {', '.join(sorted(unknown))}")
    begun = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="corral-sim-"))
    voters: list[_Voter] = []
    try:
        voters = _start_voters(root, options)
        leader = _leader(voters)
        followers = [v for v in voters if v is not leader]
        planning = {"leader": [leader], "follower": followers[:1],
                    "followers": followers}[options.planner_on]
        planner = planning[0]
        params = {"members": members, "instances": instances, "seed": seed,
                  "planners": max(1, options.planners), "window": options.window,
                  "plan_size": options.plan_size,
                  "record": record}
        setup = planner.call("setup", params)
        for number, voter in enumerate(planning):  # each process plans its share at once
            voter.conn.send(("run", {**params, "after": setup["index"],
                                     "share": [number, len(planning)]}))
        runs = [voter.expect("run", None) for voter in planning]
        run = _merged(runs)
        report = Report("raft", members, instances, seed, _tally(run["tally"]),
                        seconds=run["seconds"], setup_seconds=setup["setup"])
        report.notes.append(
            f"planners in the process of the {options.planner_on}; leader changes seen by "
            f"the planners during the run: {run['leader_changes']}; garbage collector: "
            f"{options.gc_mode}")
        if options.what_if:
            report.notes.append(f"WHAT-IF Raft settings, not the daemon's: {options.what_if}")
        indexes = _settle_all(report, voters, leader, planner, run["index"])
        if keep_states:
            report.states = [voter.call("state") for voter in voters]
        if snapshot:  # on the most up-to-date replica, the planner's last
            chosen = max(voters, key=lambda v: (indexes[v.index], v is not planner))
            report.snapshot = chosen.call("snapshot")
            report.notes.append(f"snapshot figures from voter{chosen.index}")
        report.total_seconds = time.perf_counter() - begun
        return report
    finally:
        try:
            _shutdown(voters)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _settle_all(report: Report, voters: list[_Voter], leader: _Voter, planner: _Voter,
                index: int) -> dict[int, int]:
    """Wait for every replica to apply the last command; their figures into ``report``.
    Returns each voter's applied index."""
    warnings = 0
    indexes: dict[int, int] = {}
    # A command retried after a timeout may commit once more after the planners finished
    # (apply answers it from its kept result, but the index moves): sample every replica
    # again at the highest index any of them reached, until they reach the same one.
    seen = {voter.index: voter.call("reach", index) for voter in voters}
    for _ in range(SETTLE_ROUNDS):
        index = max(seen.values())
        seen = {voter.index: voter.call("reach", index) for voter in voters}
        if len(set(seen.values())) == 1:
            break
    for voter in voters:
        role = "leader at start" if voter is leader else "follower"
        name = f"voter{voter.index} ({role}{', planner' if voter is planner else ''})"
        settled = voter.call("settle", index)
        report.rss[name] = settled["rss"]
        report.cpu[name] = settled["cpu"]
        report.digests[name] = f"{settled['digest'][:16]} at index {settled['index']}"
        report.compacted[name] = settled["compacted"]
        indexes[voter.index] = settled["index"]
        warnings += settled["warnings"]
    report.notes.append(f"pysyncobj warnings logged by the voters: {warnings}")
    return indexes


def _start_voters(root: Path, options: RaftOptions) -> list[_Voter]:
    """Spawn the voter processes on free loopback ports; returns once each is ready."""
    context = multiprocessing.get_context("spawn")
    addresses = [f"127.0.0.1:{port}" for port in free_ports(VOTERS)]
    voters: list[_Voter] = []
    try:
        for index in range(VOTERS):
            mine, theirs = context.Pipe()
            process = context.Process(target=voter_main, name=f"corral-sim-voter{index}",
                                      args=(theirs, index, addresses, str(root),
                                            options.gc_mode, options.what_if),
                                      daemon=True)
            process.start()
            theirs.close()
            voters.append(_Voter(index, process, mine))
        for voter in voters:
            voter.expect("ready", START_TIMEOUT)
    except BaseException:
        _shutdown(voters)
        raise
    return voters


def _leader(voters: list[_Voter], timeout: float = START_TIMEOUT) -> _Voter:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for voter in voters:
            if voter.call("leader", timeout=10):
                return voter
        time.sleep(0.1)
    raise TimeoutError("no voter became leader")


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of several planner processes as one: the slowest one's time."""
    tallies = [run["tally"] for run in runs]
    where = None if tallies[0]["where"] is None else \
        {k: v for tally in tallies for k, v in tally["where"].items()}
    return {"tally": {"placed": sum(t["placed"] for t in tallies),
                      "refused": {k: v for t in tallies for k, v in t["refused"].items()},
                      "replanned": sum(t["replanned"] for t in tallies), "where": where},
            "seconds": max(run["seconds"] for run in runs),
            "index": max(run["index"] for run in runs),
            "leader_changes": sum(run["leader_changes"] for run in runs)}


def _tally(data: dict[str, Any]) -> Tally:
    return Tally(placed=data["placed"], refused=data["refused"], replanned=data["replanned"],
                 where=data["where"])


def _shutdown(voters: list[_Voter]) -> None:
    """Ask every voter to stop; kill the processes that do not exit in time (or at once
    if this is interrupted, e.g. by a second Ctrl-C)."""
    try:
        for voter in voters:
            try:
                voter.conn.send(("stop", None))
            except OSError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for voter in voters:
            voter.process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for voter in voters:
            if voter.process.is_alive():
                voter.process.kill()
                voter.process.join(5)
            voter.conn.close()

