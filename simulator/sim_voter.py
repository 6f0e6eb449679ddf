"""A voter process of the simulator's Raft mode (see ``simulator.sim_raft``): one
``RaftStore`` serving the parent's requests (setup, run, reach, settle, state, snapshot)
over a pipe until "stop"."""

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
import time
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pysyncobj import SyncObjConf

from cluster.state import compaction, raft
from cluster.state.cluster_view import view_from_state
from cluster.state.commands import command
from cluster.state.digest import MARK
from cluster.state.raft import RaftStore
from simulator.fake_driver import FakeDriver
from simulator.sim_pipeline import Pipeline
from simulator.sim_workload import (
    Placer,
    Tally,
    setup_phases,
    state_digest,
)

SETUP_CHUNK = 4000  # setup commands in flight
SETTLE_TIMEOUT = 300.0
PR_SET_PDEATHSIG = 1  # prctl(2)
COMPACTION_PREFIX = "compaction."  # a what-if setting of cluster.state.compaction
FREEZE_PERIOD = 1.0  # seconds between gc.freeze() calls with --gc freeze


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
    (RaftStore.start reads the module's ``raft_conf``); a ``compaction.NAME`` setting
    replaces that constant of ``cluster.state.compaction``. Simulator processes only."""
    for key in [key for key in settings if key.startswith(COMPACTION_PREFIX)]:
        setattr(compaction, key.removeprefix(COMPACTION_PREFIX), settings.pop(key))
    original = raft.raft_conf

    def conf(journal_dir: Path, password: str, bind_address: str,
             dump: Any = None, on_fsync: Any = None) -> SyncObjConf:
        found = original(journal_dir, password, bind_address, dump, on_fsync)
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
    store = RaftStore(address, [a for a in addresses if a != address], journal, "sim")
    await store.start()
    freezer = asyncio.create_task(_freeze_often()) if gc_mode == "freeze" else None
    ops: dict[str, Callable[[RaftStore, Path, Any], Awaitable[Any]]] = {
        "leader": _is_leader, "setup": _setup, "run": _run, "settle": _settle,
        "reach": _reach, "mark": _mark,
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
        placers = [Placer(view_from_state(state), profile)
                   for _ in range(params["planners"])]
    tally = Tally(where={} if params["record"] else None)
    pipeline = Pipeline(store, placers, tally, params["window"], params["plan_size"])
    started = time.perf_counter()
    await pipeline.place_all(spec for spec in driver.instances(params["instances"])
                             if spec.index % planners == mine)
    seconds = time.perf_counter() - started
    with store.read() as state:
        pipeline.reconcile(state.instances)
        index = state.index
    return {"tally": tally.as_dict(), "seconds": seconds, "index": index,
            "leader_changes": pipeline.leader_changes}


async def _settle(store: RaftStore, journal: Path, index: int) -> dict[str, Any]:
    """Wait until this replica applied the leader's last command; its figures."""
    await _reach(store, journal, index)
    with store.read() as state:
        return {"index": state.index, "digest": state_digest(state), "rss": _rss(),
                "peak rss": _rss("VmHWM"),
                "compacted": _compactions(store),
                "journal bytes": _journal_bytes(store),
                "compaction stall": float(getattr(store._sync, "longest_stall", 0.0)),  # noqa: SLF001
                "events": list(getattr(store._sync, "events", [])),  # noqa: SLF001
                "term": _term(store),
                "warnings": WARNINGS.count, "cpu": _cpu_seconds()}


async def _mark(store: RaftStore, journal: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The daemon's own replica check: the planner commits a ``replica.mark``; every
    voter returns its digest at that marker (cluster/state/digest.py) and how long it
    waited for it."""
    started = time.perf_counter()
    if params["submit"]:
        await store.submit(command(MARK, mark=params["mark"]))
    found = await store.wait_mark(params["mark"], SETTLE_TIMEOUT)
    if found is None:
        raise RuntimeError(f"no digest at the marker within {SETTLE_TIMEOUT} s")
    return {"index": found.index, "digest": found.digest,
            "seconds": time.perf_counter() - started}


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


def _compactions(store: RaftStore) -> int:
    """Log compactions this voter completed (dumps written, log cut: state/compaction.py)."""
    sync = store._sync  # noqa: SLF001 - the simulator looks inside its own voters
    return int(getattr(sync, "compactions", 0)) if sync is not None else 0


def _term(store: RaftStore) -> int:
    """The Raft term: 1 plus the elections after the first (pysyncobj's getStatus)."""
    sync = store._sync  # noqa: SLF001
    return int(sync.getStatus()["raft_term"]) if sync is not None else 0


def _journal_bytes(store: RaftStore) -> int:
    sync = store._sync  # noqa: SLF001
    journal = getattr(sync, "journal", None)
    return int(journal.size) if journal is not None else 0


def _cpu_seconds() -> float:
    """CPU time (user and system) this process has used so far."""
    times = os.times()
    return times.user + times.system


def _rss(field: str = "VmRSS") -> int:
    """Resident memory of this process in bytes (``VmHWM``: its peak so far)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


