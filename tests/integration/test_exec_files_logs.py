"""Exec websockets, file transfer and logs against a real daemon and real containers."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


@pytest.fixture
def running(api: Api) -> Iterator[str]:
    name = f"x{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": name, "start": True,
                                      "source": {"type": "image", "alias": "busybox"}})
    yield name
    api.settle("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
    api.settle("DELETE", f"/1.0/instances/{name}")


def rootfs(daemon: DaemonProcess, name: str) -> Path:
    return daemon.root / "storage-pools" / "default" / "containers" / name / "rootfs"


def push(api: Api, name: str, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    hdrs = {f"X-LXD-{k}": v for k, v in headers.items()}
    status, _, raw = api.raw("POST", f"/1.0/instances/{name}/files?path={path}", body, hdrs)
    return status, json.loads(raw)


def pull(api: Api, name: str, path: str) -> tuple[int, dict[str, str], bytes]:
    return api.raw("GET", f"/1.0/instances/{name}/files?path={path}")


def run(api: Api, name: str, *cmd: str) -> dict[str, Any]:
    op: dict[str, Any] = api.ok("POST", f"/1.0/instances/{name}/exec",
                                {"command": list(cmd), "record-output": True})
    return op


# --- files ------------------------------------------------------------------------------

def test_push_pull_ownership_mode_and_append(api: Api, daemon: DaemonProcess,
                                             running: str) -> None:
    assert push(api, running, "/root/a.txt", b"one\n", uid="1000", gid="1001",
                mode="0640")[0] == 200
    status, headers, body = pull(api, running, "/root/a.txt")
    assert (status, body) == (200, b"one\n")
    assert (headers["X-LXD-uid"], headers["X-LXD-gid"], headers["X-LXD-mode"],
            headers["X-LXD-type"]) == ("1000", "1001", "0640", "file")
    host = (rootfs(daemon, running) / "root" / "a.txt").stat()
    shift = rootfs(daemon, running).stat().st_uid  # the container's root on the host
    assert (host.st_uid, host.st_gid) == (shift + 1000, shift + 1001)
    assert push(api, running, "/root/a.txt", b"two\n", write="append")[0] == 200
    assert pull(api, running, "/root/a.txt")[2] == b"one\ntwo\n"
    out = run(api, running, "stat", "-c", "%u %g %a", "/root/a.txt")
    assert out["metadata"]["return"] == 0
    assert push(api, running, "/root/new", b"x")[0] == 200
    assert pull(api, running, "/root/new")[1]["X-LXD-mode"] == "0644"


def test_directories_symlinks_and_delete(api: Api, running: str) -> None:
    assert push(api, running, "/srv", b"", type="directory")[0] == 200
    assert push(api, running, "/srv/d", b"", type="directory", mode="0750")[0] == 200
    assert push(api, running, "/srv/d", b"", type="directory")[0] == 200  # exists: fine
    assert push(api, running, "/srv/d/f", b"data")[0] == 200
    assert push(api, running, "/srv/link", b"d/f", type="symlink")[0] == 200
    status, headers, body = pull(api, running, "/srv")
    listing = json.loads(body)
    assert status == 200 and headers["X-LXD-type"] == "directory"
    assert sorted(listing["metadata"]) == ["d", "link"]
    assert pull(api, running, "/srv/d")[1]["X-LXD-mode"] == "0750"
    status, headers, body = pull(api, running, "/srv/link")
    assert (headers["X-LXD-type"], body) == ("symlink", b"/srv/d/f")
    assert api.raw("DELETE", f"/1.0/instances/{running}/files?path=/srv/d")[0] == 400
    for path in ("/srv/link", "/srv/d/f", "/srv/d"):
        assert api.raw("DELETE", f"/1.0/instances/{running}/files?path={path}")[0] == 200
    assert pull(api, running, "/srv/d")[0] == 404
    assert push(api, running, "/nope/f", b"x")[0] == 404
    assert push(api, running, "/root/f", b"x", write="append")[0] == 404
    assert push(api, running, "/root/f", b"x", type="fifo")[0] == 400


def test_symlinks_and_dotdot_never_leave_the_rootfs(api: Api, daemon: DaemonProcess,
                                                    running: str) -> None:
    host_hostname = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() \
        else b"\0"
    assert push(api, running, "/evil", b"/etc", type="symlink")[0] == 200
    assert run(api, running, "ln", "-s", "../../../../../../etc", "/root/up")[
        "metadata"]["return"] == 0
    for path in ("/evil/hostname", "/root/up/hostname", "/../../../../etc/hostname"):
        status, _, body = pull(api, running, path)
        assert status == 200 and body.strip() == running.encode() != host_hostname.strip()
    assert push(api, running, "/evil/corral-pwned", b"x")[0] == 200
    assert push(api, running, "/root/up/../../corral-pwned2", b"x")[0] == 200
    assert not Path("/etc/corral-pwned").exists() and not Path("/corral-pwned2").exists()
    assert (rootfs(daemon, running) / "etc" / "corral-pwned").exists()
    assert (rootfs(daemon, running) / "corral-pwned2").exists()


# --- exec and logs -------------------------------------------------------------------------

def test_recorded_exec_output_is_served_as_logs(api: Api, running: str) -> None:
    op = run(api, running, "sh", "-c", "echo out; echo err >&2; exit 3")
    meta = op["metadata"]
    assert meta["return"] == 3
    stdout_url, stderr_url = meta["output"]["1"], meta["output"]["2"]
    logs = api.get(f"/1.0/instances/{running}/logs")
    assert stdout_url in logs and stderr_url in logs
    assert f"/1.0/instances/{running}/logs/lxc.log" in logs
    assert api.raw("GET", stdout_url)[2] == b"out\n"
    assert api.raw("GET", stderr_url)[2] == b"err\n"
    assert api.raw("GET", f"/1.0/instances/{running}/logs/..%2f..%2fcorral.log")[0] == 404
    assert api.raw("DELETE", f"/1.0/instances/{running}/logs/lxc.log")[0] == 400
    assert api.raw("DELETE", stdout_url)[0] == 200
    assert stdout_url not in api.get(f"/1.0/instances/{running}/logs")


def test_exec_on_a_stopped_instance_is_refused(api: Api) -> None:
    name = f"s{secrets.token_hex(3)}"
    api.ok("POST", "/1.0/instances", {"name": name, "source": {"alias": "busybox"}})
    try:
        status, doc = api.call("POST", f"/1.0/instances/{name}/exec", {"command": ["true"]})
        assert (status, doc["error"]) == (400, "Instance is not running")
        assert push(api, name, "/root/offline", b"works stopped")[0] == 200
        assert pull(api, name, "/root/offline")[2] == b"works stopped"
    finally:
        api.settle("DELETE", f"/1.0/instances/{name}")


async def _ws_exec(socket: str, name: str, body: dict[str, Any],
                   talk: Any) -> tuple[dict[str, Any], Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket)) as http:
        async with http.post(f"http://corral/1.0/instances/{name}/exec", json=body) as resp:
            doc = await resp.json()
        assert resp.status == 202, doc
        op, fds = doc["operation"], doc["metadata"]["metadata"]["fds"]
        sockets = {fd: await http.ws_connect(f"http://corral{op}/websocket?secret={secret}")
                   for fd, secret in fds.items()}
        result = await talk(sockets)
        async with http.get(f"http://corral{op}/wait?timeout=30") as resp:
            final = (await resp.json())["metadata"]
        for ws in sockets.values():
            await ws.close()
        return final, result


async def _read_all(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    data = b""
    async for msg in ws:
        data += msg.data
    return data


def test_interactive_exec_has_a_sized_pty(api: Api, daemon: DaemonProcess,
                                          running: str) -> None:
    async def talk(ws: dict[str, aiohttp.ClientWebSocketResponse]) -> bytes:
        await ws["0"].send_bytes(b"stty size; tty\n")  # sent at once: must not be lost
        seen = b""
        while b"/dev/pts/" not in seen:
            seen += (await asyncio.wait_for(ws["0"].receive(), 30)).data
        await ws["control"].send_str(json.dumps({"command": "window-resize",
                                                 "args": {"width": "120", "height": "40"}}))
        await asyncio.sleep(0.3)
        await ws["0"].send_bytes(b"stty size; exit 7\n")
        return seen + await asyncio.wait_for(_read_all(ws["0"]), 30)

    final, out = asyncio.run(_ws_exec(str(daemon.socket), running, {
        "command": ["sh"], "interactive": True, "wait-for-websocket": True,
        "width": 91, "height": 33}, talk))
    assert final["status"] == "Success" and final["metadata"]["return"] == 7
    assert b"33 91" in out and b"/dev/pts/" in out and b"40 120" in out


def test_control_signal_and_client_disconnect_end_the_command(
        api: Api, daemon: DaemonProcess, running: str) -> None:
    async def signal(ws: dict[str, aiohttp.ClientWebSocketResponse]) -> None:
        await asyncio.sleep(0.5)
        await ws["control"].send_str(json.dumps({"command": "signal", "signal": 9}))
        await asyncio.wait_for(asyncio.gather(_read_all(ws["1"]), _read_all(ws["2"])), 30)

    final, _ = asyncio.run(_ws_exec(str(daemon.socket), running, {
        "command": ["sleep", "300"], "wait-for-websocket": True}, signal))
    assert final["metadata"]["return"] == 137

    async def leave(ws: dict[str, aiohttp.ClientWebSocketResponse]) -> None:
        await asyncio.sleep(0.5)
        for sock in ws.values():
            await sock.close()

    final, _ = asyncio.run(_ws_exec(str(daemon.socket), running, {
        "command": ["sleep", "301"], "wait-for-websocket": True}, leave))
    assert final["status"] == "Success"
    ps = run(api, running, "ps")["metadata"]["output"]["1"]
    assert b"sleep 301" not in api.raw("GET", ps)[2]
