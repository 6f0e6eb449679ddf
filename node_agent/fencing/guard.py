"""Self-fencing as the node agent drives it: renew on acknowledged heartbeats, keep the
lease file current, hard-stop HA instances when the lease runs out, hold their starts
back while fenced, and start again what a fence stopped once the lease is held again.

::

    agent._heartbeat --beat(submit)--> FenceGuard --renewed(sent)--> SelfFence
                                          |  after each beat, and after an HA start:
                                          v
              fencing/lease.json <--write-- refresh: deadline + HA instances' pids
                     |                                       (ensure_watchdog when any)
                     v
              watchdog process: kills them once time.monotonic() > deadline
    FenceGuard._enforce (every check period): the same kill from inside the daemon

``kills`` counts the HA instances fenced on this member, by the daemon or the watchdog
(``kills.py``; ``corral_ha_fenced_instances_total``, through ``NodeFacade``).

``holds``: the agent skips a pass over an HA instance while fenced, and ``on_lift``
kicks every local instance when the lease is held again. ``stopped_by_fence``: an HA
instance that a fence stopped is started again (``converge.plan_power``'s ``again``)
instead of being reported as stopped by itself. Names stay in ``fenced`` (and in the lease
file, for the next daemon) until the agent has started the instance again.

A residual window: an HA instance that starts and is not yet in the lease file (the file
is rewritten right after the start) is not known to the watchdog, should the daemon be
frozen or killed in between; the daemon's own check still stops it if it runs again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from cluster.state.apply_members import offline_threshold
from cluster.state.ha import ha_enabled
from cluster.state.store import Store
from node_agent.fencing import proc
from node_agent.fencing.fence import (
    SelfFence,
    hard_stop,
    listed_process,
    write_member_lease,
)
from node_agent.fencing.kills import FenceKills
from node_agent.fencing.lease_file import Listed, lease_path, read_lease
from node_agent.fencing.timing import CHECK_PERIOD, DEFAULT_OFFLINE_THRESHOLD, fencing_lease
from node_agent.fencing.watchdog import ensure_watchdog, fenced_file

log = logging.getLogger(__name__)
KINDS = {"container": "lxc", "virtual-machine": "qemu"}


class Host(Protocol):
    """What the guard needs of ``LocalNode``."""

    def instance_pid(self, name: str, instance_type: str = "container") -> int: ...


class FenceGuard:
    """One member's self-fence. ``state_dir`` None: no lease file and no watchdog (the
    gate and the daemon's own kill still work; for tests of the agent alone)."""

    def __init__(self, member: Callable[[], str], store: Store, host: Host,
                 state_dir: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.member, self.store, self.host = member, store, host  # member(): joins rename
        self.state_dir = state_dir
        self.clock = clock
        self.on_lift: Callable[[], None] = lambda: None
        carried = read_lease(lease_path(state_dir)) if state_dir is not None else None
        if carried is not None and carried.boot_id != proc.boot_id():
            carried = None  # pids, start times and the deadline were of another boot
        self.fence = SelfFence(fencing_lease(DEFAULT_OFFLINE_THRESHOLD), clock,
                               None if carried is None else carried.deadline)
        self.listed: dict[str, Listed] = {i.name: i for i in carried.instances} if carried else {}
        self.fenced: set[str] = set(carried.fenced) if carried else set()
        if self.fence.expired():
            self.fenced |= set(self.listed)
        self._keep_file = carried is not None
        self._refreshing = asyncio.Lock()
        # The watchdog stamps its kills with the real CLOCK_MONOTONIC, whatever ``clock``.
        self.kills = FenceKills(proc.boot_id(), time.monotonic())

    def start(self) -> asyncio.Task[None]:
        """The daemon's own check, every check period (cancel the task to stop it)."""
        return asyncio.create_task(self._enforce())

    async def beat(self, submit: Awaitable[Any]) -> None:
        """Send one heartbeat (await ``submit``): renew the lease if it is acknowledged,
        then rewrite the lease file; ``on_lift`` when that ended a fence."""
        was_fenced, first = self.fence.fenced(), not self.fence.acknowledged
        sent = self.clock()
        try:
            await submit
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried
            log.info("heartbeat not committed: %s", exc)
        else:
            self.fence.renewed(sent)
        await self.refresh()
        if was_fenced and not self.fence.fenced():
            log.log(logging.INFO if first else logging.WARNING,
                    "fencing lease held%s (%.2f s left): HA instances may run here",
                    "" if first else " again", self.fence.remaining())
            self.on_lift()

    def holds(self, ha: bool) -> bool:
        """Whether a pass over an instance must wait: it is HA and this member fenced."""
        return ha and self.fence.fenced()

    def stopped_by_fence(self, name: str) -> bool:
        return name in self.fenced

    def restarted(self, name: str) -> None:
        """The agent started ``name`` again (or it no longer should run here)."""
        self.fenced.discard(name)

    async def refresh(self) -> None:
        """Rewrite the lease file: the deadline and the running HA instances' processes
        (the lease's length follows ``cluster.offline_threshold``). Failures are logged."""
        async with self._refreshing:
            with self.store.read() as state:
                threshold = offline_threshold(state)
                wanted = [(i.name, i.type) for i in state.instances.values()
                          if i.location == self.member() and ha_enabled(state, i)]
            self.fence.set_lease(fencing_lease(threshold))
            self.fenced &= {name for name, _ in wanted}  # failed over: not ours to start
            try:
                self.listed = await asyncio.to_thread(self._look, wanted)
                if self.fence.expired():
                    self.fenced |= set(self.listed)
                if self.state_dir is not None and (self.listed or self._keep_file):
                    await asyncio.to_thread(self._write, self.fence.deadline,
                                            list(self.listed.values()), set(self.fenced))
            except Exception:  # noqa: BLE001 - the heartbeats must go on; the next retries
                log.exception("fencing lease file not written")

    def _look(self, wanted: list[tuple[str, str]]) -> dict[str, Listed]:
        """``_processes``, and the watchdog's kills since the last look (blocking)."""
        if self.state_dir is not None:
            self.kills.read(fenced_file(self.state_dir))
        return self._processes(wanted)

    def _processes(self, wanted: list[tuple[str, str]]) -> dict[str, Listed]:
        """The running ones among ``wanted`` (name, instance type), by name (blocking)."""
        found = (listed_process(name, KINDS.get(kind, "lxc"),
                                self.host.instance_pid(name, kind)) for name, kind in wanted)
        return {item.name: item for item in found if item is not None}

    def _write(self, deadline: float, listed: list[Listed], fenced: set[str]) -> None:
        assert self.state_dir is not None
        write_member_lease(self.state_dir, deadline, listed, fenced)
        self._keep_file = True
        if listed:
            ensure_watchdog(self.state_dir)

    async def _enforce(self) -> None:
        """Until cancelled: kill the listed HA processes once the lease ran out."""
        if self._keep_file:  # a lease a daemon before left: the watchdog follows us now
            await self.refresh()
        while True:
            await asyncio.sleep(CHECK_PERIOD)
            if not (self.listed and self.fence.expired()):
                continue
            victims = list(self.listed.values())
            self.fenced |= {v.name for v in victims}
            log.warning("fencing lease ran out %.2f s ago: hard-stopping HA instances %s",
                        -self.fence.remaining(), ", ".join(v.name for v in victims))
            killed = await asyncio.to_thread(hard_stop, victims)
            self.kills.killed(killed)
            for item in killed:
                log.warning("fenced %s %s: killed pid %d", item.kind, item.name, item.pid)
            for item in victims:
                if self.listed.get(item.name) == item:
                    del self.listed[item.name]
