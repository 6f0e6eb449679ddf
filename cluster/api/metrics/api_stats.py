"""What the API served: LXD's request counters, and latency by route and code.

LXD counts every request by the kind of entity its URL names and by how it ended
(``lxd_api_requests_completed_total{entity_type,result}``, ``result`` one of
``succeeded``, ``error_client``, ``error_server``) and gauges those in flight
(``lxd_api_requests_ongoing{entity_type}``); a URL that names no entity (a 404 on
``/not/an/endpoint``) counts as ``server``, as in LXD. Corral adds
``corral_api_request_duration_seconds{route,method,code}``, where ``route`` is the route's
pattern (``/1.0/instances/{name}``), never the raw path, so the series stay few. Members'
``/internal/`` calls are not clients' requests and are not counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RESULTS = ("succeeded", "error_client", "error_server")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
# The first path segment after /1.0 and the entity type LXD counts it under.
_ENTITIES = {
    "instances": "instance", "containers": "instance", "virtual-machines": "instance",
    "images": "image", "profiles": "profile", "networks": "network",
    "storage-pools": "storage_pool", "certificates": "certificate", "projects": "project",
    "operations": "operation", "warnings": "warning", "cluster": "cluster",
}


def entity_type(path: str) -> str:
    """LXD's entity type of a request path: ``/1.0/instances/c1/state`` is ``instance``,
    ``/1.0/cluster/members/m1`` is ``cluster_member``; anything else is ``server``."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or parts[0] != "1.0":
        return "server"
    if parts[1] == "cluster" and len(parts) > 2 and parts[2] == "members":
        return "cluster_member"
    return _ENTITIES.get(parts[1], "server")


def result_of(status: int) -> str:
    if status >= 500:
        return "error_server"
    return "error_client" if status >= 400 else "succeeded"


class ApiStats:
    """Counts kept by the middleware and read at scrape time (one per daemon; nothing is
    registered globally, so several daemons' apps may live in one process)."""

    def __init__(self) -> None:
        self.completed: Counter[tuple[str, str]] = Counter()
        self.ongoing: Counter[str] = Counter()
        self.latency = Histogram("corral_api_request_duration_seconds",
                                 "Time the API took to answer a request, by route pattern, "
                                 "method and HTTP status code.",
                                 ["route", "method", "code"], registry=None,
                                 buckets=LATENCY_BUCKETS)

    def families(self) -> list[Metric]:
        completed = CounterMetricFamily(
            "lxd_api_requests_completed", "The total number of completed API requests.",
            labels=["entity_type", "result"])
        for (entity, result), count in sorted(self.completed.items()):
            completed.add_metric([entity, result], count)
        ongoing = GaugeMetricFamily("lxd_api_requests_ongoing",
                                    "The number of API requests currently being handled.",
                                    labels=["entity_type"])
        for entity, count in sorted(self.ongoing.items()):
            ongoing.add_metric([entity], count)
        return [completed, ongoing, *self.latency.collect()]

    def middleware(self) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith("/internal/"):
                return await handler(request)
            entity = entity_type(request.path)
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "other"
            started = time.monotonic()
            self.ongoing[entity] += 1
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.ongoing[entity] -= 1
                self.completed[(entity, result_of(status))] += 1
                self.latency.labels(route, request.method, str(status)).observe(
                    time.monotonic() - started)

        return middleware
