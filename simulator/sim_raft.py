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
                                            digest, RSS (and peak), CPU time, log
                                            compactions, Raft term, compaction and stall
                                            timeline
    "mark"     to each                 -->  the planner commits a replica.mark; each
                                            returns its digest at it (corral cluster check)
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

import multiprocessing
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pysyncobj import SyncObjConf

from cluster.state.raft import BATCH
from simulator.sim_voter import voter_main
from simulator.sim_workload import Report, Tally

VOTERS = 3
DEFAULT_WINDOW = 8 * BATCH  # placements in flight
DEFAULT_PLAN_SIZE = 256  # placements per instance.create_many command
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SETTLE_ROUNDS = 3  # re-samplings of the replicas' indexes before their digests are taken
GC_MODES = ("default", "freeze")
PLANNER_ON = "follower"  # see the module docstring


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
    unknown = set(options.what_if) - set(vars(SyncObjConf())) - {
        f"compaction.{name}" for name in ("MIN_BYTES", "RATIO")}
    if unknown:
        raise ValueError("not pysyncobj settings (nor compaction.MIN_BYTES or .RATIO): "
                         f"{', '.join(sorted(unknown))}")
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
        placing_from = time.time()
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
        report.placing_from = placing_from
        indexes = _settle_all(report, voters, leader, planner, run["index"])
        _check_marks(report, voters, planner)
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
        report.peak_rss[name] = settled["peak rss"]
        report.cpu[name] = settled["cpu"]
        report.digests[name] = f"{settled['digest'][:16]} at index {settled['index']}"
        report.compacted[name] = settled["compacted"]
        report.journal[name] = settled["journal bytes"]
        report.stalls[name] = settled["compaction stall"]
        report.terms[name] = settled["term"]
        report.events.extend((at, name, what, took) for at, what, took in settled["events"])
        indexes[voter.index] = settled["index"]
        warnings += settled["warnings"]
    report.notes.append(f"pysyncobj warnings logged by the voters: {warnings}")
    return indexes


def _check_marks(report: Report, voters: list[_Voter], planner: _Voter) -> None:
    """``corral cluster check``'s way: one ``replica.mark`` committed, every replica's
    digest of its whole state at that marker."""
    for voter in voters:
        voter.conn.send(("mark", {"mark": "simulate-end", "submit": voter is planner}))
    for voter in voters:
        found = voter.expect("mark", None)
        report.marks[f"voter{voter.index}"] = (
            f"{found['digest'][:16]} at index {found['index']} "
            f"(ready {found['seconds']:.1f} s after it was committed)")


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

