"""What every intent controller shares: find the unfinished intents of its kinds, drive
each in a task of its own, and report progress without flooding the log.

A controller's ``run`` scans ``State.intents`` when it starts (a new leader resumes
every unfinished intent) and again whenever an ``intent.*`` command commits, or every
``RESCAN`` seconds. An intent whose driver raised is driven again after ``RETRY_PAUSE``:
the driver then finds it half-way (``resumed``) and undoes or rolls forward.

The drive that finishes an intent counts it (``corral_moves_total{kind,result}``), with
its duration when that drive found it new (one leader drove all of it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.controllers.control_metrics import ControlMetrics
from cluster.controllers.runtime import Lease
from cluster.state import waiters
from cluster.state.model import Intent

log = logging.getLogger(__name__)
RESCAN = 1.0
RETRY_PAUSE = 1.0
PROGRESS_EVERY = 1.0  # seconds between two progress commits of one intent


class IntentController:
    """Base of the move, live-move and evacuation controllers."""

    name = "intents"
    kinds: frozenset[str] = frozenset()

    def __init__(self, metrics: ControlMetrics | None = None) -> None:
        self._failed_at: dict[str, float] = {}
        self.metrics = metrics if metrics is not None else ControlMetrics()

    async def drive(self, lease: Lease, intent_id: str, resumed: bool) -> None:
        raise NotImplementedError

    async def run(self, lease: Lease) -> None:
        running: dict[str, asyncio.Task[None]] = {}
        seen: set[str] = set()  # driven under this lease: a second drive is a resume
        queue = lease.store.subscribe()
        try:
            while True:
                with lease.store.read() as state:
                    todo = [i.id for i in state.intents.values()
                            if i.kind in self.kinds and not i.finished]
                now = time.monotonic()
                for intent_id in todo:
                    task = running.get(intent_id)
                    if task is not None and not task.done():
                        continue
                    if now - self._failed_at.get(intent_id, 0.0) < RETRY_PAUSE:
                        continue
                    running[intent_id] = asyncio.create_task(
                        self._guard(lease, intent_id, resumed=intent_id in seen),
                        name=f"{self.name}-{intent_id}")
                    seen.add(intent_id)
                for intent_id in [k for k, t in running.items() if t.done()]:
                    del running[intent_id]
                await _next_change(queue, RESCAN)
        finally:
            lease.store.unsubscribe(queue)
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _guard(self, lease: Lease, intent_id: str, resumed: bool) -> None:
        before = read_intent(lease, intent_id)
        started = time.monotonic()
        try:
            await self.drive(lease, intent_id, resumed)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; driven again (as resumed) after a pause
            log.exception("%s: driving intent %s failed", self.name, intent_id)
            self._failed_at[intent_id] = time.monotonic()
        finally:
            self._count(lease, before, started)

    def _count(self, lease: Lease, before: Intent | None, started: float) -> None:
        """Count the intent if this drive finished it."""
        if before is None or before.finished:
            return
        with lease.store.read() as state:
            after = state.intents.get(before.id)
            phase = after.phase if after is not None else ""
        whole = before.phase == "new"
        self.metrics.move_finished(before.kind, phase,
                                   time.monotonic() - started if whole else None)


async def _next_change(queue: asyncio.Queue[Any], timeout: float) -> None:
    """Return after the next intent command commits (or ``timeout``); drain the rest."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        try:
            change = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            return
        if change.command.type.startswith("intent."):
            while not queue.empty():
                queue.get_nowait()
            return


def read_intent(lease: Lease, intent_id: str) -> Intent | None:
    """A private copy of the intent as this replica has it (None once forgotten)."""
    with lease.store.read() as state:
        intent = state.intents.get(intent_id)
        if intent is None:
            return None
        return Intent(intent.id, intent.kind, dict(intent.request), dict(intent.plan),
                      intent.phase, {k: dict(v) for k, v in intent.items.items()},
                      dict(intent.progress), intent.error, intent.cancel, intent.cancellable,
                      dict(intent.locks), intent.member, intent.created_at,
                      intent.updated_at)


class Throttled:
    """Commit an intent's progress at most once per ``PROGRESS_EVERY``, one commit in
    flight at a time; a failed commit is dropped (the next one carries newer figures)."""

    def __init__(self, lease: Lease, intent_id: str,
                 every: float = PROGRESS_EVERY) -> None:
        self.lease, self.intent_id, self.every = lease, intent_id, every
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def __call__(self, **progress: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every or (self._task is not None and not self._task.done()):
            return
        self._last = now
        self._task = asyncio.create_task(self._commit(progress))

    async def _commit(self, progress: dict[str, Any]) -> None:
        try:
            await self.lease.submit("intent.progress", intent=self.intent_id,
                                    progress=progress, timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - progress is a hint
            log.debug("progress of %s not committed: %s", self.intent_id, exc)

    async def flush(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


async def until_cancelled(lease: Lease, intent_id: str, work: Awaitable[Any],
                          period: float = 0.5) -> Any:
    """Await ``work`` unless the intent's cancel flag is set meanwhile: then cancel the
    work and raise ``MoveCancelled``."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=period)
            if done:
                return task.result()
            intent = read_intent(lease, intent_id)
            if intent is None or intent.cancel:
                raise MoveCancelled("Operation cancelled")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class MoveCancelled(Exception):
    """The client cancelled the operation (``DELETE /1.0/operations/<id>``)."""


def check_cancel(lease: Lease, intent_id: str) -> None:
    intent = read_intent(lease, intent_id)
    if intent is None or intent.cancel:
        raise MoveCancelled("Operation cancelled")


Step = Callable[[], Awaitable[Any]]


async def agent_step(lease: Lease, uid: str, type_: str, wait: float = 600.0,
                     **args: Any) -> dict[str, Any]:
    """Commit a fenced instance command and wait (``wait`` s) for the agent to carry it
    out; unlike ``Lease.submit_and_wait`` every keyword (``timeout`` too) is the
    command's."""
    return await waiters.submit_and_wait(lease.store, lease.command(type_, **args), uid, wait)
