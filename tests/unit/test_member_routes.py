"""The ``MEMBER`` route policy: the ``/internal/`` routes members call on each other are
served only to a peer presenting the cluster certificate, checked once in the access
middleware (``cluster/api/app.py``), not by each handler. A client in the trust store is
not a member; neither is the root-only unix socket. A route without a known policy is
refused when the app is built."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cluster.api.app import MEMBER, build_app, route_table
from corral_shared import tls
from tests.unit.served_api import Served, served_api

MARK = "/internal/replica/marks/nothing?timeout=0.2"
VOLUME = "/internal/instances/c1/volume?uid=nope"


def _call(port: int, method: str, path: str, cert: tuple[Path, Path] | None = None,
          body: Any = None) -> tuple[int, dict[str, Any]]:
    context = tls.client_context(*(cert or (None, None)))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body))
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _pair(directory: Path, name: str) -> tuple[Path, Path]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    tls.ensure_pair(crt, key, name, [])
    return crt, key


def _trust(served: Served, crt: Path) -> None:
    status, doc = served.api.call("POST", "/1.0/certificates",
                                  {"type": "client", "name": "alice",
                                   "certificate": crt.read_text()})
    assert status == 201, doc


def test_member_routes_refuse_trusted_clients_and_strangers(tmp_path: Path) -> None:
    with served_api(tmp_path / "m") as served:
        trusted, stranger = _pair(tmp_path, "alice"), _pair(tmp_path, "mallory")
        _trust(served, trusted[0])
        # alice is trusted: the public API serves her ...
        assert _call(served.https_port, "GET", "/1.0/instances", trusted)[0] == 200
        assert _call(served.https_port, "GET", "/1.0/instances", stranger)[0] == 403
        # ... but no member route does, nor to a stranger, nor to the unix socket.
        for method, path in (("GET", MARK), ("GET", VOLUME), ("DELETE", VOLUME),
                             ("POST", "/internal/instances/c1/migration/incoming?uid=x")):
            for cert in (trusted, stranger, None):
                status, doc = _call(served.https_port, method, path, cert)
                assert (status, doc["type"], doc["error_code"]) == (403, "error", 403), \
                    (method, path, cert, doc)
            status, doc = served.api.call(method, path)
            assert status == 403, (method, path, doc)
        # A member (the cluster certificate) gets past the policy to the handler.
        member = (tmp_path / "m" / "server.crt", tmp_path / "m" / "server.key")
        assert _call(served.https_port, "GET", MARK, member)[0] == 504  # no such marker
        assert _call(served.https_port, "GET", VOLUME, member)[0] == 404  # no such instance


def test_every_member_to_member_route_is_member_only() -> None:
    """Volumes, migration halves and replica marks (``/internal/init`` is the local
    ``corral init``'s, a trusted route)."""
    internal = [(m, p, policy) for m, p, _, policy in route_table()
                if p.startswith(("/internal/instances/", "/internal/replica/"))]
    assert len(internal) == 10
    assert all(policy == MEMBER for _, _, policy in internal), internal


@pytest.mark.parametrize("policy", ["open", "", None])
def test_a_route_without_a_known_policy_fails_at_build(tmp_path: Path,
                                                      policy: str | None) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    with served_api(tmp_path) as served:
        with pytest.raises(RuntimeError, match="has no access policy"):
            build_app(served.ctx, routes=[("GET", "/1.0/x", handler, policy)])  # type: ignore[list-item]
