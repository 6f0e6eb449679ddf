"""Relaying to another member: a real TLS target on loopback, a front app that relays.

The target stands in for the hosting member (an in-process aiohttp server with the
cluster certificate); the front app is the member the client called. Nothing here
needs root.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from cluster.api import forwarding, proxy
from cluster.api.context import CTX
from cluster.api.handlers import operations
from cluster.api.middleware import error_middleware
from cluster.api.op_registry import Operations
from cluster.api.response import ApiError, sync
from cluster.state.model import Instance, Member, State
from corral_shared import tls

Client = TestClient[web.Request, web.Application]


@dataclass
class StaticStore:
    """The one store method relaying reads, over a fixed replicated state."""

    state: State

    commit: int = 0

    @contextmanager
    def read(self) -> Iterator[State]:
        yield self.state

    def commit_index(self) -> int:
        return self.commit


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    seen = {"method": request.method, "path_qs": request.path_qs,
            "headers": dict(request.headers), "sha": hashlib.sha256(body).hexdigest(),
            "length": len(body), "peer": tls.peer_fingerprint(request.transport)}
    return web.json_response(seen, status=201, headers={"ETag": "e1", "X-LXD-mode": "0644"})


async def _download(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-LXD-type": "file"})
    await response.prepare(request)
    for i in range(16):
        await response.write(bytes([i]) * 65536)
    await response.write_eof()
    return response


async def _websocket(request: web.Request) -> web.StreamResponse:
    """Echoes frames; "bye" makes it send three frames then close with 4001."""
    if request.query.get("secret") != "s3":
        return web.json_response({"error": "Permission denied"}, status=403)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT and msg.data == "bye":
            for i in range(3):
                await ws.send_bytes(b"out%d" % i)
            await ws.close(code=4001, message=b"done")
        elif msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data.upper())
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    request.app[CLOSES].append(ws.close_code or 0)
    return ws


async def _exec(request: web.Request) -> web.Response:
    url = "/1.0/operations/op-on-target"
    return web.json_response({"type": "async", "operation": url}, status=202,
                             headers={"Location": url})


async def _operation(request: web.Request) -> web.Response:
    request.app[PROBES].append(request.match_info["id"])
    if request.match_info["id"] != "op-on-target":
        return web.json_response({"error": "Operation not found"}, status=404)
    return sync({"id": "op-on-target", "served_by": "target",
                 "forwarded": request.headers.get(proxy.FORWARDED_HEADER, "")})


CLOSES: web.AppKey[list[int]] = web.AppKey("closes", list)
PROBES: web.AppKey[list[str]] = web.AppKey("probes", list)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "member"
    path.mkdir()
    tls.ensure_server_cert(path)
    return path


async def _serve_tls(app: web.Application, cert_root: Path) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    context = tls.server_context(cert_root / "server.crt", cert_root / "server.key")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"{host}:{port}"


@pytest.fixture
async def target(root: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """The hosting member: serves with the cluster certificate, on loopback."""
    app = web.Application()
    app[CLOSES], app[PROBES] = [], []
    app.router.add_route("*", "/echo", _echo)
    app.router.add_get("/download", _download)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/1.0/operations/{id}", _operation)
    app.router.add_get("/1.0/instances/{name}/state", _echo)
    app.router.add_post("/1.0/instances/{name}/exec", _exec)
    runner, address = await _serve_tls(app, root)
    yield address, app
    await runner.cleanup()


def _front_app(root: Path, address: str) -> web.Application:
    """The member the client called: relays everything to ``address``."""
    ctx = SimpleNamespace(paths=SimpleNamespace(root=root),
                          store=StaticStore(State(), commit=41))

    async def relay(request: web.Request) -> web.StreamResponse:
        if proxy.is_websocket(request):
            return await proxy.forward_websocket(request, address, ctx)
        return await proxy.forward(request, address, ctx)

    app = web.Application(middlewares=[error_middleware()])
    app.router.add_route("*", "/{tail:.*}", relay)
    proxy.setup_proxy(app)
    return app


@pytest.fixture
async def front(root: Path, target: tuple[str, web.Application]) -> AsyncIterator[Client]:
    client = TestClient(TestServer(_front_app(root, target[0])))
    await client.start_server()
    yield client
    await client.close()


async def test_a_request_and_its_answer_pass_through_unchanged(front: Client, root: Path) -> None:
    body = os.urandom(1 << 20)
    resp = await front.post("/echo?path=/root/x&a=1", data=body, headers={
        "X-LXD-uid": "1000", "X-LXD-write": "append", "Connection": "keep-alive",
        "Content-Type": "application/octet-stream", "X-Corral-Forwarded": "0"},
        skip_auto_headers=["Accept-Encoding"])
    assert resp.status == 201
    assert resp.headers["ETag"] == "e1" and resp.headers["X-LXD-mode"] == "0644"
    seen = await resp.json()
    assert seen["path_qs"] == "/echo?path=/root/x&a=1" and seen["method"] == "POST"
    assert (seen["length"], seen["sha"]) == (len(body), hashlib.sha256(body).hexdigest())
    headers = seen["headers"]
    assert headers["X-LXD-uid"] == "1000" and headers["X-LXD-write"] == "append"
    assert headers["X-Corral-Forwarded"] == "1"  # the loop guard, whatever the client sent
    assert headers["X-Corral-Applied"] == "41"  # the relay's commit index: apply that first
    assert headers["Content-Type"] == "application/octet-stream"
    assert "Accept-Encoding" not in headers  # the relay adds none of its own
    assert headers["User-Agent"].startswith("Python") and "Connection" not in headers
    cluster_pem = (root / "server.crt").read_text()
    assert seen["peer"] == tls.fingerprint(tls.pem_to_der(cluster_pem))


async def test_a_streamed_answer_arrives_byte_for_byte(front: Client) -> None:
    resp = await front.get("/download")
    assert resp.status == 200 and resp.headers["X-LXD-type"] == "file"
    data = await resp.read()
    assert data == b"".join(bytes([i]) * 65536 for i in range(16))


async def test_an_unreachable_member_is_a_503(root: Path, unused_tcp_port: int) -> None:
    async with TestClient(TestServer(_front_app(root, f"127.0.0.1:{unused_tcp_port}"))) as c:
        resp = await c.get("/1.0/instances")
        doc = await resp.json()
    assert resp.status == 503 and doc["error_code"] == 503
    assert "not reachable" in doc["error"]


async def test_a_member_without_the_cluster_certificate_is_not_trusted(root: Path,
                                                                        tmp_path: Path) -> None:
    other = tmp_path / "impostor"
    other.mkdir()
    tls.ensure_server_cert(other)  # a different key and certificate
    app = web.Application()
    app.router.add_route("*", "/echo", _echo)
    runner, address = await _serve_tls(app, other)
    try:
        async with TestClient(TestServer(_front_app(root, address))) as c:
            resp = await c.get("/echo")
            assert resp.status == 503
    finally:
        await runner.cleanup()


async def test_websocket_frames_and_close_codes_cross_the_relay(
        front: Client, target: tuple[str, web.Application]) -> None:
    ws = await front.ws_connect("/ws?secret=s3")
    await ws.send_str("hello")
    assert (await ws.receive()).data == "HELLO"
    await ws.send_bytes(b"\x00\x01\x02")
    assert (await ws.receive()).data == b"\x02\x01\x00"
    await ws.close(code=4000)
    assert ws.close_code == 4000
    for _ in range(100):
        if target[1][CLOSES]:
            break
        await _tick()
    assert target[1][CLOSES] == [4000]


async def test_output_sent_before_the_members_close_is_all_delivered(front: Client) -> None:
    ws = await front.ws_connect("/ws?secret=s3", autoclose=False)
    await ws.send_str("bye")
    frames = []
    while True:
        msg = await ws.receive()
        if msg.type is not WSMsgType.BINARY:
            break
        frames.append(msg.data)
    assert frames == [b"out0", b"out1", b"out2"]
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "done")
    await ws.close()


async def test_a_refused_websocket_keeps_its_status(front: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await front.ws_connect("/ws?secret=wrong")
    assert caught.value.status == 403


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.02)


# -- which member a request goes to ---------------------------------------------------------


def _instance(name: str, location: str) -> Instance:
    return Instance(uid=name, name=name, type="container", location=location,
                    architecture="x86_64", image="busybox", created_at=0.0)


def _state(target_address: str) -> State:
    state = State()
    state.members = {"m1": Member("m1", "127.0.0.1:1"), "m2": Member("m2", target_address),
                     "m3": Member("m3", "")}
    state.instances = {"here": _instance("here", "m1"), "there": _instance("there", "m2"),
                       "lost": _instance("lost", "m3")}
    return state


def test_only_instances_of_other_members_are_relayed() -> None:
    state = _state("10.0.0.2:8443")
    assert forwarding.remote_member(state, "m1", "here") is None
    assert forwarding.remote_member(state, "m1", "nosuch") is None  # the handler's 404
    assert forwarding.remote_member(state, "m1", "there") == ("m2", "10.0.0.2:8443")
    with pytest.raises(ApiError) as caught:
        forwarding.remote_member(state, "m1", "lost")
    assert caught.value.status == 503 and "'m3' is not reachable" in caught.value.message


def test_only_instance_local_routes_are_wrapped() -> None:
    async def handler(request: web.Request) -> web.Response:
        return sync("local")

    table = [("GET", "/1.0/instances/{name}", handler, "trusted"),
             ("POST", "/1.0/instances/{name}/exec", handler, "trusted"),
             ("GET", "/1.0/operations/{id}/websocket", handler, "untrusted")]
    wrapped = forwarding.wrap_routes(table)
    assert wrapped[0][2] is handler
    assert wrapped[1][2] is not handler and wrapped[2][2] is not handler
    assert [r[3] for r in wrapped] == ["trusted", "trusted", "untrusted"]


@pytest.fixture
async def member(root: Path, target: tuple[str, web.Application]) -> AsyncIterator[Client]:
    """Member m1 with the real route wrappers; the target plays m2."""

    async def local_state(request: web.Request) -> web.Response:
        return sync({"served_by": "m1"})

    ops = Operations("m1", lambda op: None)
    app = web.Application(middlewares=[error_middleware()])
    context: Any = SimpleNamespace(member="m1", store=StaticStore(_state(target[0])), ops=ops,
                                   paths=SimpleNamespace(root=root))
    app[CTX] = context
    for method, path, handler, _ in forwarding.wrap_routes([
            ("GET", "/1.0/instances/{name}/state", local_state, "trusted"),
            ("POST", "/1.0/instances/{name}/exec", local_state, "trusted"),
            ("GET", "/1.0/operations/{id}", operations.get_operation, "trusted")]):
        app.router.add_route(method, path, handler)
    proxy.setup_proxy(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def _metadata(resp: aiohttp.ClientResponse) -> Any:
    return json.loads(await resp.text())


async def test_a_remote_instance_is_served_by_its_member(member: Client) -> None:
    resp = await member.get("/1.0/instances/there/state")
    seen = await _metadata(resp)
    assert resp.status == 201 and seen["path_qs"] == "/1.0/instances/there/state"
    resp = await member.get("/1.0/instances/here/state")
    assert (await _metadata(resp))["metadata"] == {"served_by": "m1"}
    resp = await member.get("/1.0/instances/lost/state")
    assert resp.status == 503


async def test_a_forwarded_request_is_never_forwarded_again(member: Client) -> None:
    resp = await member.get("/1.0/instances/there/state",
                            headers={proxy.FORWARDED_HEADER: "1"})
    assert (await _metadata(resp))["metadata"] == {"served_by": "m1"}


def _app(member: Client) -> web.Application:
    assert isinstance(member.server, TestServer)
    return member.server.app


async def test_an_operation_of_another_member_is_found_and_cached(member: Client) -> None:
    resp = await member.get("/1.0/operations/op-on-target")
    doc = await _metadata(resp)
    assert resp.status == 200 and doc["metadata"]["served_by"] == "target"
    assert doc["metadata"]["forwarded"] == "1"
    cache = _app(member)[proxy.PROXY].operations
    assert cache["op-on-target"][0] == "m2"
    resp = await member.get("/1.0/operations/unknown")
    assert resp.status == 404 and "unknown" not in cache


async def test_an_operation_started_through_the_relay_needs_no_probe(
        member: Client, target: tuple[str, web.Application]) -> None:
    resp = await member.post("/1.0/instances/there/exec", json={"command": ["true"]})
    assert resp.status == 202
    assert _app(member)[proxy.PROXY].operations["op-on-target"][0] == "m2"
    resp = await member.get("/1.0/operations/op-on-target")
    assert resp.status == 200 and target[1][PROBES] == ["op-on-target"]  # the GET itself
