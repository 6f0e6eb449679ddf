"""The pooled client between members, against a real aiohttp server with mutual TLS on
loopback: one connection serves many calls, each call carries this member's commit
index, and a new cluster certificate (a join) gets a new TLS context."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cluster.transport.peers import APPLIED_HEADER, PeerClient
from corral_shared import tls


@pytest.fixture
def root(tmp_path: Path) -> Path:
    tls.ensure_pair(tmp_path / "server.crt", tmp_path / "server.key", "corral", ["127.0.0.1"])
    return tmp_path


@pytest.fixture
async def server(root: Path) -> AsyncIterator[str]:
    connections: dict[int, int] = {}

    async def who(request: web.Request) -> web.Response:
        transport = request.transport
        number = connections.setdefault(id(transport), len(connections))
        return web.json_response({
            "connection": number, "applied": request.headers.get(APPLIED_HEADER),
            "extra": request.headers.get("X-Extra"),
            "peer": tls.peer_fingerprint(transport)})

    app = web.Application()
    app.router.add_route("*", "/who", who)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context(
        root / "server.crt", root / "server.key"))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}/who"
    finally:
        await runner.cleanup()


async def test_calls_share_one_connection_and_carry_the_commit_index(
        root: Path, server: str) -> None:
    client = PeerClient(root)
    try:
        seen = []
        for applied, method in ((7, "GET"), (8, "POST"), (0, "DELETE")):
            session = client.session(timeout=5, applied=applied)
            async with session.request(method, server, headers={"X-Extra": "x"}) as resp:
                seen.append(await resp.json())
        assert [s["connection"] for s in seen] == [0, 0, 0]
        assert [s["applied"] for s in seen] == ["7", "8", None]
        assert {s["extra"] for s in seen} == {"x"}
        fingerprint = tls.fingerprint(tls.pem_to_der((root / "server.crt").read_text()))
        assert {s["peer"] for s in seen} == {fingerprint}  # the cluster certificate
    finally:
        await client.close()


async def test_a_new_cluster_certificate_gets_a_new_context(root: Path) -> None:
    client = PeerClient(root)
    first = client.tls.context()
    assert client.tls.context() is first
    crt, key = tls.generate("corral", ["127.0.0.1"])
    (root / "server.crt").write_bytes(crt)
    (root / "server.key").write_bytes(key)
    os.utime(root / "server.crt", ns=(1, 1))  # a different stamp, however fast the test
    assert client.tls.context() is not first
    await client.close()


async def test_a_restarted_member_gets_a_new_connection_even_for_a_post(root: Path) -> None:
    """A pooled connection to a member whose daemon stopped is dropped, not reused: the
    next call, even a POST (which aiohttp never sends twice), reaches the new daemon."""
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method})

    async def serve(port: int) -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_route("*", "/ok", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True,
                           ssl_context=tls.server_context(root / "server.crt",
                                                          root / "server.key"))
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    client = PeerClient(root)
    runner, port = await serve(0)
    try:
        async with client.session(timeout=5).get(f"https://127.0.0.1:{port}/ok") as resp:
            assert resp.status == 200
        await runner.cleanup()  # the daemon stops; its connections close
        runner, _ = await serve(port)
        async with client.session(timeout=5).post(f"https://127.0.0.1:{port}/ok") as resp:
            assert (await resp.json())["method"] == "POST"
    finally:
        await runner.cleanup()
        await client.close()
