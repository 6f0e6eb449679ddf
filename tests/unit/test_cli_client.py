"""The CLI end to end against a fake LXD on a unix socket (a fake at the process boundary).

The fake answers with LXD 5.0's envelopes and records each request, so these tests pin
down exactly what the CLI sends: the contract the corral daemon has to serve.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from corral_cli.exec import StdinReader
from corral_cli.main import main


def sync(metadata: Any, status: int = 200, etag: str | None = None) -> web.Response:
    headers = {"ETag": etag} if etag else None
    return web.json_response({"type": "sync", "status": "Success", "status_code": 200,
                              "operation": "", "error_code": 0, "error": "",
                              "metadata": metadata}, status=status, headers=headers)


def error(message: str, code: int) -> web.Response:
    return web.json_response({"type": "error", "status": "", "status_code": 0, "operation": "",
                              "error_code": code, "error": message, "metadata": None},
                             status=code)


@dataclass
class FakeLXD:
    """Recorded requests plus the operations the fake has handed out."""

    socket: Path
    calls: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    exec_stdin: bytearray = field(default_factory=bytearray)
    exec_events: list[str] = field(default_factory=list)
    # The fake exec's command reads all its stdin before it writes (as ``cat`` does):
    # a command that exits first may lose its input, and the CLI rightly stops sending.
    exec_stdin_ended: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by the server's thread once it has seen the control socket close.
    exec_control_closed: threading.Event = field(default_factory=threading.Event)
    instance_status: str = "Running"

    def operation(self, metadata: Any = None, resources: Any = None, *, fail: str = "",
                  class_: str = "task") -> web.Response:
        op_id = f"op{len(self.ops)}"
        op = {"id": op_id, "class": class_, "description": "x", "status": "Running",
              "status_code": 103, "resources": resources, "metadata": metadata,
              "may_cancel": False, "err": "", "location": "none",
              "created_at": "2026-11-27T11:14:23Z", "updated_at": "2026-11-27T11:14:23Z"}
        final = dict(op, status="Failure" if fail else "Success",
                     status_code=400 if fail else 200, err=fail)
        self.ops[op_id] = final
        return web.json_response({"type": "async", "status": "Operation created",
                                  "status_code": 100, "operation": f"/1.0/operations/{op_id}",
                                  "error_code": 0, "error": "", "metadata": op}, status=202)

    def methods(self, path: str) -> list[str]:
        return [f"{m} {p}" for m, p, _, _ in self.calls if p.startswith(path)]


INSTANCE = {"name": "c1", "architecture": "x86_64", "config": {"user.a": "1"},
            "devices": {}, "ephemeral": False, "profiles": ["default"], "stateful": False,
            "description": "", "status": "Running", "status_code": 103, "type": "container",
            "expanded_config": {"user.a": "1", "image.os": "busybox"},
            "expanded_devices": {"root": {"type": "disk", "path": "/", "pool": "default"}},
            "created_at": "2026-11-27T11:14:23Z", "location": "none"}


def build_app(fake: FakeLXD) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        body = b"" if request.headers.get("Upgrade") else await request.read()
        fake.calls.append((request.method, request.path_qs, dict(request.headers), body))
        return await handler(request)

    async def instance(request: web.Request) -> web.Response:
        if request.match_info["name"] != "c1":
            return error("Instance not found", 404)
        if request.method == "GET":
            status = fake.instance_status
            return sync(dict(INSTANCE, status=status,
                             status_code=103 if status == "Running" else 102), etag="abc")
        if request.method == "PUT" and request.headers.get("If-Match") != "abc":
            return error("ETag doesn't match", 412)
        return fake.operation()

    async def create(request: web.Request) -> web.Response:
        return fake.operation(resources={"instances": ["/1.0/instances/quiet-owl"]})

    async def state(request: web.Request) -> web.Response:
        body = await request.json()
        if body["action"] == "stop":
            fake.instance_status = "Stopped"
        return fake.operation()

    async def wait(request: web.Request) -> web.Response:
        op = fake.ops.get(request.match_info["id"])
        fake.exec_events.append("operation waited")
        return sync(op) if op else error("not found", 404)

    async def exec_post(request: web.Request) -> web.Response:
        fds = {"0": "s0", "1": "s1", "2": "s2", "control": "sc"}
        response = fake.operation({"fds": fds}, class_="websocket")
        fake.ops[max(fake.ops)]["metadata"] = {"return": 3}
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        secret = request.query["secret"]
        ws = web.WebSocketResponse()
        # Recorded before the handshake completes: the client connects the next socket
        # (and, after the last, sends stdin) only once this one's handshake is done.
        fake.exec_events.append(f"connect {secret}")
        await ws.prepare(request)
        if secret == "s0":
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    fake.exec_events.append(f"stdin barrier {msg.data!r}")
                    break
                fake.exec_stdin.extend(msg.data)
            fake.exec_stdin_ended.set()
        elif secret in ("s1", "s2"):
            await fake.exec_stdin_ended.wait()
            await ws.send_bytes(b"out\n" if secret == "s1" else b"err\n")
            await ws.send_str("")  # LXD's end-of-stream barrier
        else:
            async for _ in ws:
                pass
            fake.exec_events.append("control closed")
            fake.exec_control_closed.set()
        await ws.close()
        return ws

    async def files(request: web.Request) -> web.Response:
        return sync({})

    async def aliases(request: web.Request) -> web.Response:
        if request.method == "POST":
            return error("Alias already exists", 409)
        return sync({})

    async def images(request: web.Request) -> web.Response:
        return fake.operation({"fingerprint": "f" * 64})

    app = web.Application(middlewares=[record])
    app.router.add_route("*", "/1.0/instances/{name}", instance)
    app.router.add_post("/1.0/instances", create)
    app.router.add_put("/1.0/instances/{name}/state", state)
    app.router.add_post("/1.0/instances/{name}/exec", exec_post)
    app.router.add_post("/1.0/instances/{name}/files", files)
    app.router.add_get("/1.0/operations/{id}/wait", wait)
    app.router.add_get("/1.0/operations/{id}/websocket", websocket)
    app.router.add_post("/1.0/images", images)
    app.router.add_route("*", "/1.0/images/aliases", aliases)
    app.router.add_route("*", "/1.0/images/aliases/{name}", aliases)
    return app


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLXD]:
    """The fake serves from its own thread; the CLI runs its own loop via ``main()``."""
    fake = FakeLXD(tmp_path / "lxd.socket")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(build_app(fake))

    async def start() -> None:
        await runner.setup()
        await web.UnixSite(runner, str(fake.socket)).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    monkeypatch.setenv("CORRAL_SOCKET", str(fake.socket))
    yield fake
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_errors_print_the_lxd_error_text(fake: FakeLXD, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "nope"]) == 1
    assert capsys.readouterr().err == "Error: Instance not found\n"


def test_launch_without_a_name_learns_it_from_the_operation(
        fake: FakeLXD, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "busybox", "-c", "user.x=1"]) == 0
    assert capsys.readouterr().out == (
        "Creating the instance\nInstance name is: quiet-owl\nStarting quiet-owl\n")
    create = next(c for c in fake.calls if c[:2] == ("POST", "/1.0/instances"))
    assert json.loads(create[3]) == {
        "source": {"type": "image", "alias": "busybox"}, "type": "container",
        "config": {"user.x": "1"}, "devices": {}, "ephemeral": False, "description": ""}
    start = next(c for c in fake.calls if c[1] == "/1.0/instances/quiet-owl/state")
    assert json.loads(start[3]) == {"action": "start", "timeout": -1, "force": False,
                                    "stateful": False}
    assert fake.methods("/1.0/operations/op0/wait") and fake.methods("/1.0/operations/op1/wait")


def test_config_set_puts_the_writable_fields_with_if_match(fake: FakeLXD) -> None:
    assert main(["config", "set", "c1", "user.b=2", "user.a="]) == 0
    method, _, headers, body = next(c for c in fake.calls if c[0] == "PUT")
    assert headers["If-Match"] == "abc"
    assert json.loads(body) == {"architecture": "x86_64", "config": {"user.b": "2"},
                                "devices": {}, "ephemeral": False, "profiles": ["default"],
                                "stateful": False, "description": ""}


def test_delete_force_stops_then_deletes(fake: FakeLXD) -> None:
    assert main(["delete", "--force", "c1"]) == 0
    assert [c for c in fake.methods("/1.0/instances") if not c.startswith("GET")] == [
        "PUT /1.0/instances/c1/state", "DELETE /1.0/instances/c1"]


def test_exec_streams_and_returns_the_command_status(
        fake: FakeLXD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    stdin = tmp_path / "stdin"
    stdin.write_bytes(b"input data")
    with open(stdin) as handle:
        monkeypatch.setattr("sys.stdin", handle)
        assert main(["exec", "c1", "--", "sh", "-c", "x"]) == 3
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("out\n", "err\n")
    assert bytes(fake.exec_stdin) == b"input data"
    assert fake.exec_events[:4] == ["connect sc", "connect s0", "connect s1", "connect s2"]
    assert "stdin barrier ''" in fake.exec_events
    body = json.loads(next(c for c in fake.calls if c[1].endswith("/exec"))[3])
    assert body["wait-for-websocket"] is True and body["interactive"] is False
    # the control socket may only close after the operation was waited for
    # (the fake server notes the close in its own thread, maybe after main() returned)
    assert fake.exec_control_closed.wait(30)
    events = fake.exec_events
    assert fake.methods("/1.0/operations/op0/wait")
    assert events.index("operation waited") < events.index("control closed")


def test_stdin_arriving_after_the_session_ended_is_dropped_quietly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The command may end before its stdin does; the reader thread outlives the loop."""
    errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    read_fd, write_fd = os.pipe()

    async def session() -> StdinReader:
        return StdinReader(read_fd)

    reader = asyncio.run(session())  # returns with the loop closed
    try:
        os.write(write_fd, b"late input")
    finally:
        os.close(write_fd)
    assert reader.thread is not None
    reader.thread.join(30)
    os.close(read_fd)
    assert not reader.thread.is_alive() and errors == []


def test_file_push_sends_lxd_headers(fake: FakeLXD, tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("data")
    assert main(["file", "push", str(source), "c1/root/", "--mode", "640", "--uid", "7"]) == 0
    method, path, headers, body = next(c for c in fake.calls if c[0] == "POST")
    assert path == "/1.0/instances/c1/files?path=/root/f.txt" and body == b"data"
    assert (headers["X-LXD-type"], headers["X-LXD-mode"], headers["X-LXD-uid"]) == (
        "file", "0640", "7")


def test_image_import_uploads_then_moves_an_existing_alias(fake: FakeLXD, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    tarball = tmp_path / "img.tar.gz"
    tarball.write_bytes(b"tarball bytes")
    assert main(["image", "import", str(tarball), "--alias", "bb"]) == 0
    assert capsys.readouterr().out == f"Image imported with fingerprint: {'f' * 64}\n"
    upload = next(c for c in fake.calls if c[:2] == ("POST", "/1.0/images"))
    assert upload[3] == b"tarball bytes"
    assert upload[2]["Content-Type"] == "application/octet-stream"
    assert upload[2]["X-LXD-filename"] == "img.tar.gz" and upload[2]["X-LXD-public"] == "false"
    assert fake.methods("/1.0/images/aliases") == ["POST /1.0/images/aliases",
                                                   "PUT /1.0/images/aliases/bb"]
    put = next(c for c in fake.calls if c[0] == "PUT")
    assert json.loads(put[3]) == {"target": "f" * 64, "description": ""}
