"""Run the controllers while this member leads Raft, fenced by a committed epoch.

``LeaderRuntime`` looks every ``period`` whether this member leads. On gaining leadership
it commits ``controller.claim`` and gets the next epoch, then starts every controller's
``run(lease)`` in one TaskGroup. It cancels the group, and awaits every controller, as
soon as this member stops leading or the committed epoch is no longer its own (another
member claimed since). It never acts on "I think I lead" alone: each controller command
carries the lease's epoch and apply refuses it once the epoch is stale
(``apply_intents.fence``), so a deposed leader's late commands change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.state import waiters
from cluster.state.apply_intents import CLAIM
from cluster.state.commands import Command, command
from cluster.state.raft import RaftStore
from cluster.state.store import Change
from cluster.transport.peers import PeerClient, PeerSession

log = logging.getLogger(__name__)
PERIOD = 0.25  # seconds between looks at leadership and the epoch
SUBMIT_TIMEOUT = 5.0
RESTART_PAUSE = 1.0  # before a controller that raised runs again (same leadership)


def leads(store: RaftStore) -> bool:
    """Whether this member is the Raft leader as far as its own replica knows."""
    return store.voter and store.leader() == store.address


@dataclass(frozen=True)
class Lease:
    """What a controller may use for one leadership: the store, the epoch its commands
    must carry, this member's name, the peer client, and the agents' waiters."""

    store: RaftStore
    epoch: int
    member: str
    peers: PeerClient | None = None

    def command(self, type_: str, **args: Any) -> Command:
        """A new command carrying this lease's epoch (apply refuses it once stale)."""
        return command(type_, epoch=self.epoch, **args)

    async def submit(self, type_: str, timeout: float | None = None, **args: Any) -> Any:
        """Commit a fenced command (within the store's own budget unless ``timeout``);
        raises the state's typed error when refused."""
        cmd = self.command(type_, **args)
        if timeout is None:
            return await self.store.submit(cmd)
        return await self.store.submit(cmd, timeout=timeout)

    def holds(self) -> bool:
        """Whether this member still leads under this lease's epoch. Check it before a
        side effect outside the state (a call to a member), which no epoch can fence."""
        with self.store.read() as state:
            current = state.controller.epoch
        return current == self.epoch and leads(self.store)

    async def wait_generation(self, queue: asyncio.Queue[Change], uid: str, generation: int,
                              timeout: float) -> None:
        """``waiters.wait_generation`` on this lease's store."""
        await waiters.wait_generation(self.store, queue, uid, generation, timeout)

    async def submit_and_wait(self, type_: str, uid: str = "", timeout: float = 600.0,
                              **args: Any) -> dict[str, Any]:
        """Commit a fenced command and wait until the agent carried out its generation."""
        return await waiters.submit_and_wait(self.store, self.command(type_, **args), uid,
                                             timeout)

    def peer_session(self, timeout: float = 600.0) -> PeerSession:
        """A session to other members that makes each apply this member's commit index
        before it acts (``peers.APPLIED_HEADER``)."""
        if self.peers is None:
            raise RuntimeError("this runtime has no peer client")
        return self.peers.session(timeout, applied=self.store.commit_index())


class Controller(Protocol):
    """Leader-only work. ``run`` may loop forever: it is cancelled when the lease ends.
    If it raises it is logged and run again after ``RESTART_PAUSE`` under the same lease;
    if it returns it stays stopped until the next leadership."""

    name: str

    async def run(self, lease: Lease) -> None: ...


class _LeaseLost(Exception):
    """Raised by the watcher to end a leadership's TaskGroup."""


class LeaderRuntime:
    """Runs ``controllers`` on whichever member leads; see the module docstring."""

    def __init__(self, store: RaftStore, member: Callable[[], str],
                 controllers: Sequence[Controller], peers: PeerClient | None = None,
                 period: float = PERIOD, restart_pause: float = RESTART_PAUSE) -> None:
        self.store = store
        self.member = member  # a callable: joining a cluster renames the member
        self.controllers = list(controllers)
        self.peers = peers
        self.period = period
        self.restart_pause = restart_pause
        self.lease: Lease | None = None  # the current one, while leading
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="leader-runtime")

    async def close(self) -> None:
        """Cancel the runtime and await it: every controller has stopped on return."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def run(self) -> None:
        """Forever: claim an epoch whenever this member leads, and run the controllers
        under it until the lease is lost."""
        while True:
            await asyncio.sleep(self.period)
            if not leads(self.store):
                continue
            try:
                found = await self.store.submit(command(CLAIM, member=self.member()),
                                                timeout=SUBMIT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - not committed: the next look retries
                log.info("controller claim failed: %s", exc)
                continue
            await self._lead(Lease(self.store, int(found["epoch"]), self.member(), self.peers))

    async def _lead(self, lease: Lease) -> None:
        log.info("leading: controllers run under epoch %d", lease.epoch)
        self.lease = lease
        try:
            async with asyncio.TaskGroup() as group:
                for controller in self.controllers:
                    group.create_task(self._supervise(controller, lease),
                                      name=f"controller-{controller.name}")
                group.create_task(self._watch(lease), name="controller-lease")
        except* _LeaseLost:
            log.info("controllers of epoch %d stopped: leadership or epoch lost", lease.epoch)
        finally:
            self.lease = None

    async def _watch(self, lease: Lease) -> None:
        while lease.holds():
            await asyncio.sleep(self.period)
        raise _LeaseLost

    async def _supervise(self, controller: Controller, lease: Lease) -> None:
        while True:
            try:
                await controller.run(lease)
                return
            except Exception:  # noqa: BLE001 - logged; run again under the same lease
                log.exception("controller %s failed; running it again", controller.name)
            await asyncio.sleep(self.restart_pause)
