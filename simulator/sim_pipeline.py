"""The planner's commit pipeline in the simulator's Raft mode (runs in a voter process,
see ``simulator.sim_raft``): plans in order, commits plans of placements with many in
flight, and plans again what apply refuses."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cluster.state import reservations
from cluster.state.errors import Conflict, StateError, Unavailable
from cluster.state.raft import RaftStore
from corral_shared.resources import ZERO
from scheduler.request import PlacementRequest
from simulator.fake_driver import SimInstance
from simulator.sim_workload import (
    REPLAN_ATTEMPTS,
    Placer,
    Tally,
    create_command,
    create_many_command,
)

PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class Planned:
    """A placement planned and counted in its planner's view, not committed yet."""

    placer: Placer
    spec: SimInstance
    request: PlacementRequest
    member: str


class Pipeline:
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
        plan: list[Planned] = []
        for spec in specs:
            placer = self.placers[spec.index % len(self.placers)]
            request = placer.request(spec)
            found = placer.place(request)
            if found.member is None:
                self.tally.refuse(spec.name, found.error)
                continue
            placer.commit(found.member, request)
            plan.append(Planned(placer, spec, request, found.member))
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

    async def _send(self, plan: list[Planned], tasks: set[asyncio.Task[None]]) -> None:
        await self.window.acquire()
        one = plan[0]
        task = asyncio.create_task(self._commit_plan(plan) if len(plan) > 1 else
                                   self._commit(one.placer, one.spec, one.request, one.member))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _commit_plan(self, plan: list[Planned]) -> None:
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


