"""The leader runtime on three RaftStores on loopback (real pysyncobj): controllers run on
the leader only, under the epoch it claimed; a leader cut off from the others has its
controllers cancelled and awaited, the new leader's run under a higher epoch, and a
command the old controller submits under its old epoch is refused once the cut heals.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from cluster.controllers.runtime import LeaderRuntime, Lease
from cluster.state.errors import Conflict
from cluster.state.raft import RaftStore
from tests.unit.test_raft_cluster import _cluster, _until
from tests.unit.test_raft_leadership import MAX_TIMEOUT, _partition


class Recorder:
    """A controller that records which leases it ran under and whether it was stopped,
    and commits a fenced command every tick while it runs."""

    name = "recorder"

    def __init__(self, member: str) -> None:
        self.member = member
        self.running: Lease | None = None
        self.leases: list[Lease] = []
        self.stopped = 0
        self.commits = 0

    async def run(self, lease: Lease) -> None:
        self.running = lease
        self.leases.append(lease)
        try:
            while True:
                await lease.submit("profile.create", timeout=2.0,
                                   name=f"{self.member}-{lease.epoch}-{self.commits}")
                self.commits += 1
                await asyncio.sleep(0.1)
        finally:
            self.running = None
            self.stopped += 1


def _running(recorders: list[Recorder]) -> list[int]:
    return [i for i, r in enumerate(recorders) if r.running is not None]


def _epoch(store: RaftStore) -> int:
    with store.read() as state:
        return state.controller.epoch


def test_controllers_follow_leadership_and_a_deposed_leaders_commands_are_refused(
        tmp_path: Path) -> None:
    async def run() -> None:
        async with _cluster(tmp_path) as (_, stores):
            recorders = [Recorder(f"m{i}") for i in range(3)]
            runtimes = [LeaderRuntime(store, partial(str, f"m{i}"), [recorders[i]], period=0.05)
                        for i, store in enumerate(stores)]
            for runtime in runtimes:
                runtime.start()
            try:
                await _until(lambda: len(_running(recorders)) == 1 and recorders[
                    _running(recorders)[0]].commits >= 3, 15)
                old = _running(recorders)[0]
                assert stores[old].leader() == stores[old].address
                lease = recorders[old].leases[-1]
                assert lease.epoch == _epoch(stores[old]) and lease.holds()
                with _partition(stores, {old}):
                    # The cut-off leader steps down (check-quorum) and stops its
                    # controllers; one of the others claims the next epoch.
                    await _until(lambda: recorders[old].running is None,
                                 2 * MAX_TIMEOUT + 2)
                    await _until(lambda: [i for i in _running(recorders) if i != old] != []
                                 and recorders[_running(recorders)[-1]].commits > 0, 15)
                    new = _running(recorders)[-1]
                    assert new != old and recorders[old].stopped == 1
                    assert recorders[new].leases[-1].epoch > lease.epoch
                assert not lease.holds()
                await _until(lambda: stores[old].leader() == stores[new].address, 10)
                # A late command of the deposed controller, under its old epoch: refused.
                refused = None
                try:
                    await lease.submit("profile.create", timeout=5.0, name="late")
                except Conflict as exc:
                    refused = exc
                assert refused is not None and "Stale controller epoch" in str(refused)
                with stores[new].read() as state:
                    assert "late" not in state.profiles
                await asyncio.sleep(0.5)
                assert _running(recorders) == [new]  # it stays the only one running
            finally:
                await asyncio.gather(*(runtime.close() for runtime in runtimes))
            assert all(r.running is None for r in recorders)  # close awaited them all
            assert recorders[new].stopped == 1

    asyncio.run(run())


def test_a_controller_that_raises_runs_again_under_the_same_lease(tmp_path: Path) -> None:
    class Flaky:
        name = "flaky"

        def __init__(self) -> None:
            self.epochs: list[int] = []

        async def run(self, lease: Lease) -> None:
            self.epochs.append(lease.epoch)
            if len(self.epochs) < 3:
                raise RuntimeError("boom")
            await asyncio.Event().wait()

    async def run() -> None:
        async with _cluster(tmp_path) as (_, stores):
            flaky = [Flaky() for _ in stores]
            runtimes = [LeaderRuntime(store, lambda: "m", [flaky[i]], period=0.05,
                                      restart_pause=0.05)
                        for i, store in enumerate(stores)]
            for runtime in runtimes:
                runtime.start()
            try:
                await _until(lambda: any(len(f.epochs) >= 3 for f in flaky), 15)
                ran = next(f for f in flaky if len(f.epochs) >= 3)
                assert len(set(ran.epochs)) == 1  # no new claim for a failing controller
            finally:
                await asyncio.gather(*(runtime.close() for runtime in runtimes))

    asyncio.run(run())
