"""Relaying to a real daemon over HTTPS with the cluster certificate.

A front app (the member the client called) relays with ``cluster.api.proxy`` to a real
daemon serving HTTPS on loopback; its ``ctx`` names a directory holding the daemon's
``server.crt``/``server.key`` (the cluster certificate). Listing, a 1 MiB file push and
pull with LXD's headers, and a whole exec websocket session go through the relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cluster.api import proxy
from cluster.api.middleware import error_middleware
from corral_shared import tls
from devtools.harness import DaemonProcess
from tests.integration.api import Api
from tests.integration.test_https_trust import free_port, tls_call

pytestmark = pytest.mark.real
Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def address(daemon: DaemonProcess) -> Iterator[str]:
    """The shared daemon on HTTPS, trusting the cluster certificate; restored after."""
    api = Api(str(daemon.socket))
    before = api.ok("GET", "/1.0")["config"]
    port = free_port()
    api.ok("PATCH", "/1.0", {"config": {"core.https_address": f"127.0.0.1:{port}"}})
    crt, key = daemon.root / "server.crt", daemon.root / "server.key"
    fingerprint = tls.fingerprint(tls.pem_to_der(crt.read_text()))
    _, doc = tls_call(port, "GET", "/1.0", cert=(crt, key))
    added = doc["metadata"]["auth"] != "trusted"  # until members trust the cluster cert
    if added:
        api.ok("POST", "/1.0/certificates", {"certificate": crt.read_text(), "name": "cluster"})
    yield f"127.0.0.1:{port}"
    if added:
        api.ok("DELETE", f"/1.0/certificates/{fingerprint}")
    api.ok("PUT", "/1.0", {"config": before})


@pytest.fixture(scope="module")
def running(daemon: DaemonProcess) -> Iterator[str]:
    api = Api(str(daemon.socket))
    name = f"p{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": name, "start": True,
                                      "source": {"type": "image", "alias": "busybox"}})
    yield name
    api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    api.settle("DELETE", f"/1.0/instances/{name}")


@pytest.fixture
async def front(daemon: DaemonProcess, address: str) -> AsyncIterator[Client]:
    ctx = SimpleNamespace(paths=SimpleNamespace(root=daemon.root),
                          store=SimpleNamespace(commit_index=lambda: 0))  # no Raft here

    async def relay(request: web.Request) -> web.StreamResponse:
        if proxy.is_websocket(request):
            return await proxy.forward_websocket(request, address, ctx)
        return await proxy.forward(request, address, ctx)

    app = web.Application(middlewares=[error_middleware()])
    app.router.add_route("*", "/{tail:.*}", relay)
    proxy.setup_proxy(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_listing_goes_through_the_relay(front: Client, running: str) -> None:
    resp = await front.get("/1.0/instances")
    doc = await resp.json()
    assert resp.status == 200 and f"/1.0/instances/{running}" in doc["metadata"]
    resp = await front.get(f"/1.0/instances/{running}")
    assert resp.status == 200 and resp.headers.get("ETag")


async def test_a_file_pushed_and_pulled_through_the_relay(front: Client, running: str) -> None:
    blob = os.urandom(1 << 20)
    url = f"/1.0/instances/{running}/files?path=/root/blob"
    resp = await front.post(url, data=blob, headers={
        "X-LXD-type": "file", "X-LXD-mode": "0600", "X-LXD-uid": "1000", "X-LXD-gid": "1000"})
    assert resp.status == 200, await resp.text()
    resp = await front.get(url)
    assert resp.status == 200 and await resp.read() == blob
    assert (resp.headers["X-LXD-mode"], resp.headers["X-LXD-uid"],
            resp.headers["X-LXD-type"]) == ("0600", "1000", "file")
    resp = await front.get(f"/1.0/instances/{running}/files?path=/nonexistent")
    assert resp.status == 404 and (await resp.json())["error"] == "Path not found"


async def _read_all(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    data = b""
    async for msg in ws:
        data += msg.data
    return data


async def test_an_exec_session_through_the_relay(front: Client, running: str) -> None:
    resp = await front.post(f"/1.0/instances/{running}/exec", json={
        "command": ["sh", "-c", "cat; echo err >&2; exit 7"], "wait-for-websocket": True})
    doc = await resp.json()
    assert resp.status == 202, doc
    op, fds = doc["operation"], doc["metadata"]["metadata"]["fds"]
    sockets = {fd: await front.ws_connect(f"{op}/websocket?secret={secret}")
               for fd, secret in fds.items()}
    try:
        await sockets["0"].send_bytes(b"through the relay\n" * 1000)
        await sockets["0"].send_bytes(b"")  # end of stdin
        out, err = await asyncio.wait_for(
            asyncio.gather(_read_all(sockets["1"]), _read_all(sockets["2"])), 30)
        resp = await front.get(f"{op}/wait?timeout=30")
        final: dict[str, Any] = (await resp.json())["metadata"]
    finally:
        for ws in sockets.values():
            await ws.close()
    assert out == b"through the relay\n" * 1000 and err == b"err\n"
    assert final["status"] == "Success" and final["metadata"]["return"] == 7


async def test_a_wrong_secret_is_refused_through_the_relay(front: Client, running: str) -> None:
    resp = await front.post(f"/1.0/instances/{running}/exec", json={
        "command": ["true"], "wait-for-websocket": True})
    op = (await resp.json())["operation"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await front.ws_connect(f"{op}/websocket?secret=nope")
    assert caught.value.status == 403
    resp = await front.delete(op)  # exec operations cannot be cancelled; it times out alone
    assert resp.status == 400 and json.loads(await resp.text())["error_code"] == 400
