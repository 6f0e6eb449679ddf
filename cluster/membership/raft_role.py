"""Keeping this member's Raft role in line with its ``database`` role.

The replicated state says who should vote (apply enforces ``cluster.max_voters``);
these loops, on every member, make Raft match it: each member switches itself between
voter and follower, and a member that finds no leader asks the others whether it still
votes (it may have been demoted while it was down). The leader's share (adding and
removing voters in Raft's configuration, handing an offline voter's vote to an online
follower) is a controller: ``cluster.controllers.voters``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from cluster.local_config import LocalConfig
from cluster.state.apply_members import VOTER
from cluster.state.raft import RaftStore
from cluster.transport.https import raft_address_for
from cluster.transport.peers import peer_session
from cluster.transport.raft_secret import raft_password

log = logging.getLogger(__name__)
ROLE_CHANGES = ("member.join", "member.remove", "member.roles", "member.update",
                "cluster.bootstrap")

_BACKGROUND: set[asyncio.Task[None]] = set()


class _Rooted(Protocol):
    @property
    def root(self) -> Path: ...


class MemberHost(Protocol):
    """What these loops read and change of their member (the API's Context is one; this
    module does not import the API)."""

    @property
    def member(self) -> str: ...

    @property
    def store(self) -> RaftStore: ...

    @property
    def local(self) -> LocalConfig | None: ...

    @property
    def paths(self) -> _Rooted: ...

    async def save_local(self) -> None: ...


def background(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _switch(ctx: MemberHost, partners: list[str], voter: bool) -> None:
    """Restart Raft on this member as a voter or follower, from the leader's state."""
    assert ctx.local is not None
    ctx.local.partners, ctx.local.voter = partners, voter
    await ctx.save_local()
    if voter != ctx.store.voter:
        log.info("member %s becomes a %s", ctx.member, "voter" if voter else "follower")
        key = await asyncio.to_thread((ctx.paths.root / "server.key").read_bytes)
        await ctx.store.rebind(ctx.store.address, partners, raft_password(key), fresh=True,
                               voter=voter)


async def _follow_own_roles(ctx: MemberHost) -> None:
    """Switch when the roles say so. A replica that is still catching up passes through
    old roles, so the switch happens only when the leader confirms it (or is this member)."""
    with ctx.store.read() as state:
        partners = sorted(m.raft_address for m in state.members.values()
                          if m.name != ctx.member and m.raft_address and VOTER in m.roles)
        me = state.members.get(ctx.member)
        wants_vote = me is not None and VOTER in me.roles
        leader = ctx.store.leader()
        leader_address = next((m.address for m in state.members.values()
                               if leader and m.raft_address == leader), "")
    if ctx.local is None or not ctx.local.clustered or me is None:
        return  # not clustered, or the replica is still arriving (join, rebind)
    if wants_vote != ctx.store.voter and leader != ctx.store.address:
        view = await _ask_the_cluster(ctx, [leader_address] if leader_address else [])
        if view is None or ctx.member not in view:
            return  # unconfirmed: the next change or round looks again
        wants_vote = VOTER in view[ctx.member]["roles"]
        partners = _voters_of(view, ctx.member)
    if (partners != sorted(ctx.local.partners) or wants_vote != ctx.local.voter
            or wants_vote != ctx.store.voter):
        await _switch(ctx, partners, wants_vote)


def _voters_of(view: dict[str, dict[str, Any]], me: str) -> list[str]:
    return sorted(raft_address_for(m["url"].removeprefix("https://"))
                  for name, m in view.items() if name != me and VOTER in m["roles"])


async def track_partners(ctx: MemberHost, period: float = 5.0) -> None:
    """Keep cluster.yaml's Raft partners (the voters) in line with the members, and
    switch this member between voter and follower when its roles change."""
    queue = ctx.store.subscribe()
    try:
        while True:
            try:
                change = await asyncio.wait_for(queue.get(), period)
                if change.command.type not in ROLE_CHANGES:
                    continue
            except TimeoutError:
                pass
            await _follow_own_roles(ctx)
    finally:
        ctx.store.unsubscribe(queue)


async def find_way_back(ctx: MemberHost, period: float = 3.0) -> None:
    """A clustered member that sees no leader for two rounds asks the other members how
    the cluster sees it: demoted or promoted while it was down, it switches itself."""
    lonely = 0
    while True:
        await asyncio.sleep(period)
        if ctx.local is None or not ctx.local.clustered or ctx.store.leader() is not None:
            lonely = 0
            continue
        lonely += 1
        if lonely < 2:
            continue
        view = await _ask_the_cluster(ctx)
        if view is None:
            continue
        if ctx.member not in view:
            log.error("member %s is no longer part of the cluster (removed while it was "
                      "down); remove its state directory to join again", ctx.member)
            continue
        wants_vote = VOTER in view[ctx.member]["roles"]
        if wants_vote != ctx.store.voter:
            await _switch(ctx, _voters_of(view, ctx.member), wants_vote)
            lonely = 0


async def _ask_the_cluster(ctx: MemberHost, addresses: list[str] | None = None,
                           ) -> dict[str, dict[str, Any]] | None:
    """Members by name as a member that knows the leader reports them, or None."""
    if not addresses:
        with ctx.store.read() as state:
            addresses = [m.address for m in state.members.values()
                         if m.name != ctx.member and m.address]
    async with peer_session(ctx.paths.root, timeout=5.0) as session:
        for address in addresses:
            url = f"https://{address}/1.0/cluster/members?recursion=1"
            try:
                async with session.get(url, headers={"X-Corral-Forwarded": "1"}) as resp:
                    if resp.status != 200:
                        continue
                    members = (await resp.json())["metadata"]
            except (aiohttp.ClientError, OSError, ValueError, KeyError, TimeoutError):
                continue
            if any("database-leader" in m.get("roles", []) for m in members):
                return {m["server_name"]: m for m in members}
    return None
