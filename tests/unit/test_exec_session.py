"""The exec websocket protocol against a plain local process (the fake is the argv only).

A real ``aiohttp`` server serves the session's websockets; the "container" command is
``sh -c ...`` run on this host instead of ``lxc-attach``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from cluster.api.handlers import exec_session
from cluster.api.handlers.exec import run_detached
from cluster.api.handlers.exec_session import ExecError, ExecSession
from cluster.api.op_registry import Operation

Serve = Callable[[ExecSession], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(session: ExecSession) -> TestClient[web.Request, web.Application]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await session.websocket(request, request.match_info["fd"])

        app = web.Application()
        app.router.add_get("/ws/{fd}", handler)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def new_op() -> Operation:
    return Operation("Executing command", "websocket", {}, "local", False)


def start(session: ExecSession) -> tuple[Operation, asyncio.Task[dict[str, Any]]]:
    op = new_op()
    session.prepare(op)
    return op, asyncio.create_task(session.run(op))


async def collect(ws: aiohttp.ClientWebSocketResponse,
                  run: asyncio.Task[dict[str, Any]]) -> tuple[bytes, bool]:
    """All binary data until the server closes; and whether that came before the op ended."""
    data = b""
    async for msg in ws:
        assert msg.type == WSMsgType.BINARY
        data += msg.data
    return data, not run.done()


async def test_pipes_stdin_eof_output_and_exit_code(serve: Serve) -> None:
    session = ExecSession(["sh", "-c", "cat; echo oops >&2; exit 3"], False, 0, 0)
    op, run = start(session)
    assert set(op.metadata["fds"]) == {"0", "1", "2", "control"}
    client = await serve(session)
    stdin = await client.ws_connect("/ws/0")
    await stdin.send_bytes(b"hello ")  # sent before stdout is connected: queued
    await stdin.send_str("world")
    await stdin.send_str("")  # pylxd's EOF
    out = await client.ws_connect("/ws/1")
    err = await client.ws_connect("/ws/2")
    (stdout, early1), (stderr, early2) = await asyncio.gather(collect(out, run),
                                                              collect(err, run))
    assert await asyncio.wait_for(run, 10) == {"return": 3}
    assert (stdout, stderr) == (b"hello world", b"oops\n")
    assert early1 and early2  # output closed before the exit code was published
    await stdin.close()


async def test_pty_size_resize_and_echo(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_session, "RAW_WAIT", 0.2)  # plain sh never goes raw
    script = "stty size; read a; stty size; echo got:$a"
    session = ExecSession(["sh", "-c", script], True, 100, 30)
    op, run = start(session)
    assert set(op.metadata["fds"]) == {"0", "control"}
    client = await serve(session)
    control = await client.ws_connect("/ws/control")
    tty = await client.ws_connect("/ws/0")
    first = b""
    while b"30 100" not in first:
        msg = await asyncio.wait_for(tty.receive(), 10)
        first += msg.data
    await control.send_str(json.dumps({"command": "window-resize",
                                       "args": {"width": "120", "height": "40"}}))
    await asyncio.sleep(0.1)
    await tty.send_bytes(b"abc\n")
    rest, early = await collect(tty, run)
    assert await asyncio.wait_for(run, 10) == {"return": 0}
    assert b"40 120" in rest and b"got:abc" in rest and early
    await control.close()


async def test_control_signal_reaches_the_process(serve: Serve) -> None:
    session = ExecSession(["sh", "-c", "echo ready; sleep 30"], False, 0, 0)
    _, run = start(session)
    client = await serve(session)
    sockets = [await client.ws_connect(f"/ws/{fd}") for fd in ("0", "1", "2", "control")]
    msg = await asyncio.wait_for(sockets[1].receive(), 10)
    assert msg.data == b"ready\n"
    await sockets[3].send_str(json.dumps({"command": "signal", "signal": 15}))
    await asyncio.gather(collect(sockets[1], run), collect(sockets[2], run))
    assert await asyncio.wait_for(run, 10) == {"return": 128 + 15}
    for ws in sockets:
        await ws.close()


async def test_client_leaving_kills_the_process(serve: Serve) -> None:
    session = ExecSession(["sh", "-c", "echo ready; sleep 30"], False, 0, 0)
    _, run = start(session)
    client = await serve(session)
    sockets = [await client.ws_connect(f"/ws/{fd}") for fd in ("0", "1", "2")]
    assert (await asyncio.wait_for(sockets[1].receive(), 10)).data == b"ready\n"
    await sockets[2].close()
    assert await asyncio.wait_for(run, 10) == {"return": 128 + 9}
    for ws in sockets:
        await ws.close()


async def test_background_child_holding_stdout_does_not_hang(serve: Serve) -> None:
    session = ExecSession(["sh", "-c", "sleep 3 & echo hi"], False, 0, 0)
    _, run = start(session)
    client = await serve(session)
    sockets = [await client.ws_connect(f"/ws/{fd}") for fd in ("0", "1", "2")]
    (data, _), _ = await asyncio.gather(collect(sockets[1], run), collect(sockets[2], run))
    assert await asyncio.wait_for(run, 10) == {"return": 0}
    assert data == b"hi\n"
    for ws in sockets:
        await ws.close()


async def test_no_client_times_out_without_running(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(exec_session, "CONNECT_TIMEOUT", 0.2)
    marker = tmp_path / "ran"
    session = ExecSession(["sh", "-c", f"touch {marker}"], False, 0, 0)
    _, run = start(session)
    with pytest.raises(ExecError, match="Timed out"):
        await run
    assert not marker.exists()


async def test_detached_run_records_output(tmp_path: Path) -> None:
    op = new_op()
    result = await run_detached(op, ["sh", "-c", "echo out; echo err >&2; exit 4"], "c1",
                                tmp_path / "c1")
    assert result["return"] == 4
    assert result["output"] == {"1": f"/1.0/instances/c1/logs/exec_{op.id}.stdout",
                                "2": f"/1.0/instances/c1/logs/exec_{op.id}.stderr"}
    assert (tmp_path / "c1" / f"exec_{op.id}.stdout").read_text() == "out\n"
    assert (tmp_path / "c1" / f"exec_{op.id}.stderr").read_text() == "err\n"
    assert await run_detached(new_op(), ["sh", "-c", "exit 2"], "c1", None) == {"return": 2}


async def test_large_streams_arrive_whole_and_closing_stdin_is_eof(serve: Serve) -> None:
    session = ExecSession(["cat"], False, 0, 0)
    _, run = start(session)
    client = await serve(session)
    stdin, out, err = [await client.ws_connect(f"/ws/{fd}") for fd in ("0", "1", "2")]
    frames = [bytes([i]) * 65536 for i in range(100)]  # far more than the stdin backlog

    async def send() -> None:
        for frame in frames:
            await stdin.send_bytes(frame)
        await stdin.close()  # no empty frame: the close itself is EOF

    _, (data, early), _ = await asyncio.gather(send(), collect(out, run), collect(err, run))
    assert await asyncio.wait_for(run, 10) == {"return": 0}
    assert data == b"".join(frames) and early


async def test_pylxd_websocket_clients_get_output_then_exit_code(serve: Serve) -> None:
    """pylxd's own ws4py clients, driven the way ``Instance.execute`` drives them."""
    from pylxd.models.instance import _CommandWebsocketClient, _StdinWebsocket
    from ws4py.manager import WebSocketManager

    session = ExecSession(["sh", "-c", "tr a-z A-Z; echo done >&2; exit 5"], False, 0, 0)
    op, run = start(session)
    client = await serve(session)
    base = f"ws://{client.host}:{client.port}/ws"
    manager = WebSocketManager()
    stdin = _StdinWebsocket(f"{base}/0", payload="hello pylxd\n", encoding="utf-8")
    stdout = _CommandWebsocketClient(manager, f"{base}/1", decode=True)
    stderr = _CommandWebsocketClient(manager, f"{base}/2", decode=True)
    for ws in (stdin, stdout, stderr):
        await asyncio.to_thread(ws.connect)
    manager.start()
    try:
        assert await asyncio.wait_for(run, 10) == {"return": 5}

        def finish() -> tuple[str, str]:  # pylxd's sequence after the operation ends
            stdin.close()
            stdout.finish_soon()
            stderr.finish_soon()
            manager.close_all()
            while not stdout.finished or not stderr.finished:
                time.sleep(0.05)
            return stdout.data, stderr.data

        assert await asyncio.to_thread(finish) == ("HELLO PYLXD\n", "done\n")
    finally:
        manager.stop()
        await asyncio.to_thread(manager.join)
