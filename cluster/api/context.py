"""What handlers reach through ``request.app[CTX]``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cluster.api.event_hub import EventHub
from cluster.api.op_registry import Operations
from cluster.api.response import ApiError
from cluster.controllers.control_metrics import ControlMetrics
from cluster.local_config import LocalConfig
from cluster.local_config import save_async as save_local_config
from cluster.state import waiters
from cluster.state.apply_members import is_witness
from cluster.state.commands import Command
from cluster.state.raft import RaftStore
from cluster.state.store import Change
from cluster.transport import peers
from node_agent.facade import NodeFacade
from node_agent.paths import Paths


@dataclass
class Context:
    paths: Paths
    member: str
    store: RaftStore
    host: NodeFacade  # the only way handlers reach this member's host
    ops: Operations
    events: EventHub
    local: LocalConfig | None = None
    started_at: float = field(default_factory=time.time)
    server_config: dict[str, Any] = field(default_factory=dict)
    # The daemon's control-plane metrics, shared with its controllers (one per daemon).
    control: ControlMetrics = field(default_factory=ControlMetrics)
    peer_client: peers.PeerClient = field(init=False)

    def __post_init__(self) -> None:
        self.peer_client = peers.PeerClient(self.paths.root)

    def rename_member(self, name: str) -> None:
        """Take the name the cluster knows this member by (when joining)."""
        self.member = name
        self.host.rename(name)
        self.ops.location = name
        self.events.location = name
        if self.local is not None:
            self.local.member = name

    @asynccontextmanager
    async def peer_session(self, timeout: float = 600.0) -> AsyncIterator[peers.PeerSession]:
        """This daemon's pooled session to other members (``peers.PeerClient``), telling
        them this member's commit index: each applies the log that far before it acts
        (``peers.APPLIED_HEADER``)."""
        yield self.peer_client.session(timeout, applied=self.store.commit_index())

    async def open_local_parts(self) -> None:
        """Make this member's pools and bridges match the replicated state (at start, and
        after ``init --auto`` or a join has committed them). A witness has none: it holds
        no instances."""
        with self.store.read() as state:
            me = state.members.get(self.member)
            if me is not None and is_witness(me):
                return
            pools = [(p.name, p.driver, dict(p.config)) for p in state.storage_pools.values()]
            nets = [(n.name, n.config.get("ipv4.address", "")) for n in state.networks.values()
                    if n.type == "bridge"]
        await self.host.open_local_parts(pools, nets)

    async def save_local(self) -> None:
        if self.local is not None:
            await save_local_config(self.paths.cluster_file, self.local)

    async def submit_and_wait(self, cmd: Command, timeout: float = 600.0) -> dict[str, Any]:
        """Commit ``cmd`` and wait until the agent has carried out the work it queued."""
        tracker = await self.submit_tracked(cmd)
        await tracker.wait(timeout)
        return tracker.value

    async def submit_tracked(self, cmd: Command) -> Tracker:
        """Commit ``cmd`` now (so a refusal is raised at once) and return a waiter.

        The feed is subscribed before the commit so the agent's report can
        never be missed; the tracker unsubscribes when waited on or closed.
        """
        queue = self.store.subscribe()
        try:
            value: dict[str, Any] = await self.store.submit(cmd) or {}
        except BaseException:
            self.store.unsubscribe(queue)
            raise
        uid = value.get("uid") or self._uid(cmd)
        return Tracker(self, queue, uid, int(value.get("generation", 0)), value)

    def _uid(self, cmd: Command) -> str:
        with self.store.read() as state:
            name = cmd.args.get("new_name") or cmd.args.get("name", "")
            inst = state.instances.get(name)
            return inst.uid if inst is not None else ""

    async def wait_report(self, queue: asyncio.Queue[Change], uid: str, generation: int,
                          timeout: float) -> None:
        """``waiters.wait_generation``, with its errors as the API's (400 and 504)."""
        try:
            await waiters.wait_generation(self.store, queue, uid, generation, timeout)
        except (waiters.AgentFailed, waiters.WaitTimedOut) as exc:
            raise ApiError(exc.code, str(exc)) from exc


@dataclass
class Tracker:
    ctx: Context
    queue: asyncio.Queue[Change]
    uid: str
    generation: int
    value: dict[str, Any]

    async def wait(self, timeout: float = 600.0) -> None:
        try:
            if self.uid and self.generation:
                await self.ctx.wait_report(self.queue, self.uid, self.generation, timeout)
        finally:
            self.close()

    def close(self) -> None:
        self.ctx.store.unsubscribe(self.queue)


CTX: web.AppKey[Context] = web.AppKey("ctx", Context)
