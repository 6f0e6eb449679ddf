"""``scope=cluster``: every member's metrics from one scrape target, under ``member``.

LXD has no cross-cluster view (canonical/lxd#9679: each member is scraped on its own).
Here the member that is asked fetches every other member's own metrics at once
(members' calls: the cluster certificate, the forwarded header so they do not fan out
again) and labels each series with the member it came from. A member that does not
answer within ``PEER_TIMEOUT`` (or is OFFLINE, or answers garbage) is left out and shows
as ``corral_member_scrape_success{member} 0``: the scrape itself still answers, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ssl import SSLContext

import aiohttp
from aiohttp import web
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from cluster.api import proxy
from cluster.api.context import Context
from cluster.api.metrics.render import merge, parse, with_label
from cluster.state.apply_members import member_status

PEER_TIMEOUT = 3.0  # s; below Prometheus's default scrape timeout of 10 s
MEMBER_LABEL = "member"


def _others(ctx: Context) -> list[tuple[str, str, bool]]:
    """``(name, address, online)`` of every other member."""
    with ctx.store.read() as state:
        return [(m.name, m.address, member_status(m) != "OFFLINE")
                for m in sorted(state.members.values(), key=lambda m: m.name)
                if m.name != ctx.member]


async def _fetch(session: aiohttp.ClientSession, ssl: SSLContext, address: str) -> list[Metric]:
    headers = {proxy.FORWARDED_HEADER: "1", "Accept": "text/plain"}
    async with session.get(f"https://{address}/1.0/metrics", ssl=ssl, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT)) as resp:
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        return parse((await resp.read()).decode())


async def cluster_families(request: web.Request, ctx: Context,
                           own: Sequence[Metric]) -> list[Metric]:
    """This member's ``own`` families and every other member's, each labelled with its
    member, plus ``corral_member_scrape_success``."""
    others = _others(ctx)
    session = proxy.session_for(request)
    ssl = proxy.ssl_context_for(request, ctx)

    async def one(address: str, online: bool) -> list[Metric] | None:
        if not online or not address:
            return None
        try:
            return await _fetch(session, ssl, address)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, UnicodeError):
            return None

    answers = await asyncio.gather(*(one(address, online) for _, address, online in others))
    success = GaugeMetricFamily("corral_member_scrape_success",
                                "Whether the member's metrics were had for this cluster "
                                "scrape (1) or not (0: offline, not answering in time, or "
                                "answering garbage).", labels=[MEMBER_LABEL])
    success.add_metric([ctx.member], 1)
    groups = [with_label(own, MEMBER_LABEL, ctx.member)]
    for (name, _, _), families in zip(others, answers, strict=True):
        success.add_metric([name], 0 if families is None else 1)
        if families is not None:
            groups.append(with_label(families, MEMBER_LABEL, name))
    return [*merge(groups), success]
