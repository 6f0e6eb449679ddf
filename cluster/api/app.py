"""The route table and the aiohttp application.

Every route names its access policy; a route without a known policy stops the
daemon at start-up instead of being served open. The policies, checked once in
``access_middleware``:

- ``UNTRUSTED``: anyone (``GET /1.0``, adding a certificate with a trust token, joining);
- ``TRUSTED``: the unix socket, or a TLS client whose certificate is in the trust store;
- ``MEMBER``: only a peer presenting the cluster certificate, over TLS (the
  ``/internal/`` routes members call on each other during moves, replica checks and
  HA replication);
- ``METRICS``: ``TRUSTED`` callers, clients with a ``metrics`` certificate, and anyone
  when ``core.metrics_authentication`` is ``false`` (``GET /1.0/metrics``).

A ``metrics`` certificate is trusted nowhere else, and the ``core.metrics_address``
listener serves ``/1.0/metrics`` only (403 for anything else, whoever asks).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from cluster.api.context import CTX, Context
from cluster.api.forwarding import wrap_routes
from cluster.api.handlers import (
    aliases,
    bootstrap,
    certificates,
    cluster_join,
    console,
    evacuation,
    events,
    files,
    ha_replicas,
    images,
    infra,
    instances,
    logs,
    members,
    metrics,
    migration,
    operations,
    profiles,
    replicas,
    server,
    snapshots,
    state,
    volumes,
)
from cluster.api.handlers import exec as exec_
from cluster.api.handlers.common import REPLICA_LAG
from cluster.api.middleware import error_middleware
from cluster.api.proxy import setup_proxy
from cluster.api.response import ApiError, sync
from cluster.state.errors import Unavailable
from cluster.transport.https import HTTPS, METRICS_LISTENER, is_trusted, may_read_metrics
from cluster.transport.peers import APPLIED_HEADER
from corral_shared import tls

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = 4 * 2**20  # JSON bodies; file and image uploads stream with their own caps
UNTRUSTED, TRUSTED, MEMBER, METRICS = "untrusted", "trusted", "member", "metrics"
POLICIES = (UNTRUSTED, TRUSTED, MEMBER, METRICS)
ACCESS_KEY: web.AppKey[dict[str, str]] = web.AppKey("access", dict)


def _trusted(routes: Sequence[tuple[str, str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(m, p, h, TRUSTED) for m, p, h in routes]


def _members(routes: Sequence[tuple[str, str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(m, p, h, MEMBER) for m, p, h in routes]


def route_table() -> list[tuple[str, str, Any, str]]:
    table = [
        ("GET", "/", _root, UNTRUSTED),
        ("GET", "/1.0", server.get_server, UNTRUSTED),
        *_trusted([r for r in server.ROUTES if r[:2] != ("GET", "/1.0")]),
        ("GET", "/1.0/instances", instances.list_instances, TRUSTED),
        ("POST", "/1.0/instances", instances.create_instance, TRUSTED),
        ("GET", "/1.0/instances/{name}", instances.get_instance, TRUSTED),
        ("PUT", "/1.0/instances/{name}", instances.put_instance, TRUSTED),
        ("PATCH", "/1.0/instances/{name}", instances.patch_instance, TRUSTED),
        ("DELETE", "/1.0/instances/{name}", instances.delete_instance, TRUSTED),
        ("POST", "/1.0/instances/{name}", instances.rename_instance, TRUSTED),
        ("GET", "/1.0/instances/{name}/state", state.get_state, TRUSTED),
        ("PUT", "/1.0/instances/{name}/state", state.put_state, TRUSTED),
        *_trusted(snapshots.ROUTES),
        *_trusted(exec_.ROUTES),
        *_trusted(files.ROUTES),
        *_trusted(logs.ROUTES),
        *_trusted(console.ROUTES),
        ("GET", "/1.0/operations", operations.list_operations, TRUSTED),
        ("GET", "/1.0/operations/{id}", operations.get_operation, TRUSTED),
        ("DELETE", "/1.0/operations/{id}", operations.delete_operation, TRUSTED),
        ("GET", "/1.0/operations/{id}/wait", operations.wait_operation, TRUSTED),
        # Authorised by the operation's per-fd secret, as in LXD.
        ("GET", "/1.0/operations/{id}/websocket", operations.operation_websocket, UNTRUSTED),
        ("GET", "/1.0/events", events.events, TRUSTED),
        *[(m, p, h, METRICS) for m, p, h in metrics.ROUTES],
        *_trusted(aliases.ROUTES),
        *_trusted(images.ROUTES),
        *_trusted(profiles.ROUTES),
        *_trusted(infra.ROUTES),
        *_trusted(bootstrap.ROUTES),
        # Untrusted clients may add their certificate with a trust token's secret.
        *[(m, p, h, UNTRUSTED) for m, p, h in certificates.ROUTES_UNTRUSTED],
        *_trusted(certificates.ROUTES),
        *_trusted(members.ROUTES),
        *_trusted(evacuation.ROUTES),
        *_trusted(replicas.ROUTES_TRUSTED),
        *_trusted(cluster_join.ROUTES_TRUSTED),
        # Members only: the peer presents the cluster certificate.
        *_members(volumes.ROUTES),
        *_members(migration.ROUTES),
        *_members(replicas.ROUTES_MEMBERS),
        *_members(ha_replicas.ROUTES),
        # A joining member proves itself with its join token's secret.
        *[(m, p, h, UNTRUSTED) for m, p, h in cluster_join.ROUTES_UNTRUSTED],
    ]
    return wrap_routes(table)  # instance-local and operation routes relay to their member


async def _root(request: web.Request) -> web.Response:
    return sync(["/1.0"])


def _is_trusted(request: web.Request) -> bool:
    """The unix socket's clients are trusted (as LXD's: root and the ``corral`` group,
    ``cluster.transport.unix_socket``); over TLS, clients whose certificate is in the
    trust store (``cluster.transport.https``)."""
    return is_trusted(request, request.app[CTX].store)


def access_middleware() -> Middleware:
    """Refuse a request its route's policy does not admit (403, LXD's envelope). A path
    outside the table (a 404 or 405 to be) is held to ``TRUSTED``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        key = f"{request.method} {route.resource.canonical}" if route.resource else ""
        policy = request.app[ACCESS_KEY].get(key, TRUSTED)
        listener = request.app.get(METRICS_LISTENER)
        if listener is not None and listener.serves(request) and policy != METRICS:
            raise ApiError(403, "Only /1.0/metrics is served on core.metrics_address")
        if policy == MEMBER:
            if not _from_member(request):
                raise ApiError(403, "Only cluster members may call this")
        elif policy == METRICS:
            if not may_read_metrics(request, request.app[CTX].store):
                raise ApiError(403, "not authorized")
        elif policy != UNTRUSTED and not _is_trusted(request):
            raise ApiError(403, "not authorized")
        return await handler(request)

    return middleware


def replica_middleware(lag: float = REPLICA_LAG) -> Middleware:
    """A peer's request says which Raft index the peer had seen committed
    (``peers.APPLIED_HEADER``): this replica applies the log that far first (at most
    ``lag`` s), so it never acts on an older state than the peer did. A replica still
    behind after that refuses (503: the peer may retry or go elsewhere) rather than
    answer from stale state."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        index = request.headers.get(APPLIED_HEADER, "")
        if index.isdigit() and _is_trusted(request):
            store = request.app[CTX].store
            if not await store.wait_applied(int(index), lag):
                log.info("replica still behind index %s after %.0f s: refusing %s %s", index,
                         lag, request.method, request.path)
                raise ApiError(503, f"This member's replica has applied index "
                                    f"{store.applied_index()}, not yet {index}: it will not "
                                    f"act on an older state than the caller's; retry")
        return await handler(request)

    return middleware


NOT_LOADED = "replica not loaded: fetching state from the leader"
# Answered without a replica: the API's root and server info (clients' waitready).
WITHOUT_REPLICA = ("/", "/1.0")


def loaded_middleware() -> Middleware:
    """A member without a whole replica (starting, fetching its state from the leader
    after a damaged journal or dump, or after a dump failed to load:
    ``RaftStore.replica_loaded``) serves none of it: 503, never an empty or partial
    list."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in WITHOUT_REPLICA and not request.app[CTX].store.replica_loaded:
            raise ApiError(503, NOT_LOADED)
        return await handler(request)

    return middleware


FRESH_READ_TIMEOUT = 5.0  # s a read waits to confirm its replica is current
# Reads that do not come from the replicated state, or must answer without a quorum:
# server info (waitready), events, operations (each member's own, in memory), and
# metrics (a scrape answers while the cluster is failing: that is when it matters).
LOCAL_READS = ("/1.0/events", "/1.0/operations", "/1.0/cluster/raft", "/1.0/metrics")


def _from_member(request: web.Request) -> bool:
    """Whether the caller presented the cluster certificate: a member, coordinating
    (roles, membership) in ways that must not wait for a quorum that may need it."""
    listener = request.app.get(HTTPS)
    transport = request.transport
    if listener is None or transport is None:
        return False
    fingerprint = tls.peer_fingerprint(transport)
    return bool(fingerprint) and fingerprint == listener.identity.fingerprint


def fresh_reads_middleware(timeout: float = FRESH_READ_TIMEOUT) -> Middleware:
    """A client's read sees every write acknowledged before it, through any member (LXD
    clients hop between members): before a GET is served from this replica, a barrier
    goes through the Raft log (``store.read_barrier``: concurrent reads share one entry).
    A member cut off from its quorum answers 503 instead of stale state. Peers' requests
    carry the index they saw committed and wait for it instead (``replica_middleware``);
    members' own calls are not held (a member being promoted asks for its roles, and the
    quorum may need it to answer first)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (request.method == "GET" and path != "/1.0" and not path.startswith(LOCAL_READS)
                and not path.startswith("/internal/")
                and APPLIED_HEADER not in request.headers and _is_trusted(request)
                and not _from_member(request)):
            try:
                await request.app[CTX].store.read_barrier(timeout)
            except Unavailable as exc:
                raise ApiError(503, str(exc)) from exc
        return await handler(request)

    return middleware


def build_app(ctx: Context,
              routes: Sequence[tuple[str, str, Any, str]] | None = None) -> web.Application:
    """The API app serving ``routes`` (the daemon's ``route_table()`` unless told);
    RuntimeError if a route names no known access policy."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    stats = metrics.setup(app, ctx)
    app.middlewares.extend([stats.middleware(), error_middleware(), access_middleware(),
                            loaded_middleware(), replica_middleware(),
                            fresh_reads_middleware()])
    app[CTX] = ctx
    access: dict[str, str] = {}
    for method, path, handler, policy in route_table() if routes is None else routes:
        if policy not in POLICIES:
            raise RuntimeError(f"route {method} {path} has no access policy")
        resource = app.router.add_route(method, path, handler).resource
        access[f"{method} {resource.canonical if resource else path}"] = policy
    app[ACCESS_KEY] = access
    setup_proxy(app)
    return app
