"""``GET /1.0/metrics``: this member's metrics, or with ``scope=cluster`` every member's.

Instance figures (the costly part: files of every container, the guest agent of every
VM) come from the scrape cache (``metrics/cache.py``); the rest (server, Raft, API,
cluster) is read from memory on each scrape. The text format is Prometheus's 0.0.4, or
OpenMetrics 1.0 when the scraper's ``Accept`` asks for it.

Who may read (``app.METRICS`` policy): the unix socket, trusted clients, members,
clients with a ``metrics`` certificate, and anyone when
``core.metrics_authentication`` is ``false``. A ``metrics`` certificate reads nothing
else. The ``core.metrics_address`` listener serves this route only.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.metrics_core import Metric

from cluster.api.context import Context
from cluster.api.handlers.common import ctx_of
from cluster.api.metrics import control, instances, server
from cluster.api.metrics.api_stats import ApiStats
from cluster.api.metrics.cache import ScrapeCache, cache_families
from cluster.api.metrics.cluster_scope import cluster_families
from cluster.api.metrics.render import (
    content_type,
    render,
    render_parts,
    wants_openmetrics,
)
from cluster.api.proxy import is_forwarded
from cluster.api.response import bad_request

SCOPES = ("", "member", "cluster")
QUERY_KEYS = frozenset({"scope", "project", "target"})
API_STATS: web.AppKey[ApiStats] = web.AppKey("api_stats", ApiStats)
SCRAPE_CACHE: web.AppKey[ScrapeCache] = web.AppKey("scrape_cache", ScrapeCache)


def setup(app: web.Application, ctx: Context) -> ApiStats:
    """The app's request counters and scrape cache; returns the counters, whose
    middleware the app installs."""
    stats = app[API_STATS] = ApiStats()

    async def collect() -> list[Metric]:
        return instances.families(await instances.measure(ctx))

    app[SCRAPE_CACHE] = ScrapeCache(collect)

    async def close(_: web.Application) -> None:
        await app[SCRAPE_CACHE].close()

    app.on_cleanup.append(close)
    return stats


def live_families(request: web.Request, ctx: Context) -> list[Metric]:
    """What is read from memory on every scrape: server, cluster, Raft, API and control
    plane figures."""
    return [*server.families(ctx), *ctx.store.collect_metrics(),
            *request.app[API_STATS].families(), *cache_families(request.app[SCRAPE_CACHE]),
            *control.families(ctx)]


def _scope(request: web.Request) -> str:
    unknown = sorted(set(request.query) - QUERY_KEYS)
    if unknown:
        raise bad_request(f"Unknown query parameter {unknown[0]!r} for /1.0/metrics")
    scope = request.query.get("scope", "")
    if scope not in SCOPES:
        raise bad_request(f"Invalid scope {scope!r}: want member or cluster")
    project = request.query.get("project", "")
    if project not in ("", instances.PROJECT):
        raise bad_request(f"Project {project!r} not found")
    return "cluster" if scope == "cluster" and not is_forwarded(request) else "member"


async def get_metrics(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    scope = _scope(request)
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    collection = await request.app[SCRAPE_CACHE].get()
    live = live_families(request, ctx)
    if scope == "cluster":
        every = await cluster_families(request, ctx, [*collection.families, *live])
        body = render(every, openmetrics)
    else:
        body = render_parts([collection.rendered(openmetrics), render(live, openmetrics)],
                            openmetrics)
    return web.Response(body=body, headers={"Content-Type": content_type(openmetrics)})


ROUTES = [("GET", "/1.0/metrics", get_metrics)]
