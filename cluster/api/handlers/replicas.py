"""Comparing replicas (``cluster.api.replica_check``): the public check and the member
route behind it.

``POST /1.0/cluster/check`` and ``GET /1.0/cluster/raft`` are corral extensions (LXD has
no such routes); trusted clients only. ``GET /internal/replica/marks/{mark}`` is for
members only: it is served to a peer that presents the cluster certificate, like the
volume and migration routes.
"""

from __future__ import annotations

from aiohttp import web

from cluster.api import schemas
from cluster.api.bodies import json_body
from cluster.api.handlers.common import ctx_of
from cluster.api.replica_check import DEFAULT_TIMEOUT, MAX_TIMEOUT, check_replicas
from cluster.api.response import ApiError, sync


def _timeout(value: object) -> float:
    """A wait in seconds, 0 < t <= MAX_TIMEOUT; ApiError 400 otherwise."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"Invalid timeout {value!r}") from exc
    if not 0 < seconds <= MAX_TIMEOUT:
        raise ApiError(400, f"The timeout must be more than 0 and at most {MAX_TIMEOUT:g} s")
    return seconds


async def check(request: web.Request) -> web.Response:
    """Commit a marker and compare every member's digest at it; 200 whether or not they
    agree (the verdict says), an error only when no marker could be committed."""
    body = await json_body(request, schemas.ClusterCheckPost) if request.can_read_body else {}
    verdict = await check_replicas(ctx_of(request), _timeout(body.get("timeout",
                                                                       DEFAULT_TIMEOUT)))
    return sync(verdict.to_json())


async def mark(request: web.Request) -> web.Response:
    """This replica's (index, digest) at the marker, once applied; 504 if it is not
    within ``?timeout`` s."""
    ctx = ctx_of(request)
    timeout = _timeout(request.query.get("timeout", DEFAULT_TIMEOUT))
    found = await ctx.store.wait_mark(request.match_info["mark"], timeout)
    if found is None:
        raise ApiError(504, f"behind: has not applied the marker within {timeout:g} s "
                            f"(applied {ctx.store.applied_index()})")
    return sync({"member": ctx.member, "index": found.index, "digest": found.digest})


async def raft_status(request: web.Request) -> web.Response:
    """``GET /1.0/cluster/raft`` (a corral extension): this member's own view of Raft
    (role, leader, term, indexes), answered without a read barrier: a member cut off
    from its quorum still says what it believes, which is what a failover test or an
    operator chasing a partition needs to see."""
    return sync(ctx_of(request).store.raft_status())


ROUTES_TRUSTED = [("POST", "/1.0/cluster/check", check),
                  ("GET", "/1.0/cluster/raft", raft_status)]
ROUTES_MEMBERS = [("GET", "/internal/replica/marks/{mark}", mark)]
