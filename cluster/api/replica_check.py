"""``POST /1.0/cluster/check``: do all replicas hold the same state at the same index?

::

    check_replicas(ctx)                       on the member the client asked
      submit replica.mark(mark=M)             one marker in the Raft log (state/digest.py)
      every member: wait_mark(M) -> (index, digest)   itself directly, the others over
                                              GET /internal/replica/marks/M (mutual TLS)
      compare(reports)                        agree, or which members differ / are behind

A member that has not applied the marker within the timeout is reported as behind, not
as differing: it may just be catching up (after a restart or a partition). The marker
needs a quorum to commit; without one the check fails with the store's error, since no
log position exists that all replicas could be compared at.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from cluster.api.context import Context
from cluster.state.commands import command
from cluster.state.digest import MARK

DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0


@dataclass(frozen=True)
class Report:
    """One member's answer: its digest at the marker, or why there is none."""

    name: str
    index: int | None = None
    digest: str | None = None
    error: str = ""


@dataclass
class Verdict:
    """The comparison: ``agree`` only when every member answered with the same
    (index, digest). ``differ``: members outside the one group that holds the most
    members (all answering members when no group is largest); ``missing``: members that
    gave no digest (behind, unreachable, or failed to digest)."""

    agree: bool
    index: int | None
    digest: str | None
    differ: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    members: list[Report] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(reports: list[Report]) -> Verdict:
    """Compare members' reports (pure). A digest that records a failure to digest
    counts as missing, never as agreeing."""
    answered = [r for r in reports if r.digest and not r.error
                and not r.digest.startswith("error")]
    missing = sorted(r.name for r in reports if r not in answered)
    groups = Counter((r.index, r.digest) for r in answered)
    ranked = groups.most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return Verdict(False, None, None, sorted(r.name for r in answered), missing,
                       list(reports))
    (index, digest), _ = ranked[0]
    differ = sorted(r.name for r in answered if (r.index, r.digest) != (index, digest))
    return Verdict(not differ and not missing, index, digest, differ, missing, list(reports))


def _members(ctx: Context) -> list[tuple[str, str]]:
    """``(name, address)`` of every member of the cluster (this one included)."""
    with ctx.store.read() as state:
        found = [(m.name, m.address) for m in state.members.values()]
    return found or [(ctx.member, "")]


async def _local(ctx: Context, mark: str, timeout: float) -> Report:
    found = await ctx.store.wait_mark(mark, timeout)
    if found is None:
        return Report(ctx.member, error=f"behind: has not applied the marker within "
                                        f"{timeout:g} s (applied {ctx.store.applied_index()})")
    return Report(ctx.member, found.index, found.digest)


async def _remote(ctx: Context, name: str, address: str, mark: str, timeout: float) -> Report:
    """Ask ``address`` for its digest at ``mark``; it waits up to ``timeout`` itself."""
    if not address:
        return Report(name, error="no address")
    url = f"https://{address}/internal/replica/marks/{quote(mark)}?timeout={timeout:g}"
    try:
        session = ctx.peer_client.session(timeout + 5.0)  # no applied-index header: a
        async with session.get(url) as resp:             # lagging member must not stall
            body = json.loads(await resp.read())
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        return Report(name, error=f"unreachable: {exc!r}")
    meta = body.get("metadata") if isinstance(body, dict) else None
    if resp.status != 200 or not isinstance(meta, dict):
        error = body.get("error") if isinstance(body, dict) else ""
        return Report(name, error=str(error or f"HTTP {resp.status}"))
    return Report(name, int(meta["index"]), str(meta["digest"]))


async def check_replicas(ctx: Context, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Commit a marker and compare every member's digest at it (module docstring).

    Raises the store's error (``Unavailable``) when the marker cannot be committed.
    """
    mark = uuid.uuid4().hex
    await ctx.store.submit(command(MARK, mark=mark))
    reports = await asyncio.gather(*(
        _local(ctx, mark, timeout) if name == ctx.member
        else _remote(ctx, name, address, mark, timeout)
        for name, address in _members(ctx)))
    return compare(list(reports))
