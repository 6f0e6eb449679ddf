"""Instance-local calls made on one member reach the member hosting the instance.

c2 lives on m2; every call below goes to m1 (or m3) and is relayed over the cluster's
mutual TLS: live state, exec (recorded, and websockets with a pty), a 1 MiB file push
and pull, logs, and operations that only m2 knows.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def hosted(members: list[DaemonProcess]) -> Iterator[str]:
    members[0].corral("launch", "busybox", "r2", "--target", "m2")
    yield "r2"
    members[0].corral("delete", "--force", "r2", check=False)


def test_state_files_and_logs_of_a_remote_instance(members: list[DaemonProcess],
                                                   hosted: str) -> None:
    m1 = Api(str(members[0].socket))
    assert m1.get(f"/1.0/instances/{hosted}")["location"] == "m2"
    assert m1.get(f"/1.0/instances/{hosted}/state")["pid"] > 0  # only m2 can know it
    blob = os.urandom(1 << 20)
    status, _, _ = m1.raw("POST", f"/1.0/instances/{hosted}/files?path=/root/blob", blob,
                          {"X-LXD-mode": "0600"})
    assert status == 200
    status, headers, body = m1.raw("GET", f"/1.0/instances/{hosted}/files?path=/root/blob")
    assert (status, headers["X-LXD-mode"], body == blob) == (200, "0600", True)
    assert f"/1.0/instances/{hosted}/logs/lxc.log" in m1.get(f"/1.0/instances/{hosted}/logs")


def test_a_recorded_exec_and_its_operation_from_any_member(members: list[DaemonProcess],
                                                           hosted: str) -> None:
    m1, m3 = Api(str(members[0].socket)), Api(str(members[2].socket))
    status, doc = m1.call("POST", f"/1.0/instances/{hosted}/exec",
                          {"command": ["sh", "-c", "echo out; exit 4"], "record-output": True})
    assert status == 202 and doc["metadata"]["location"] == "m2"
    op = m3.wait(doc["operation"])  # m3 never saw it: found by asking the others
    assert (op["status"], op["metadata"]["return"]) == ("Success", 4)
    assert m1.raw("GET", op["metadata"]["output"]["1"])[2] == b"out\n"
    assert m3.call("GET", "/1.0/operations/00000000-0000-0000-0000-000000000000")[0] == 404


async def _interactive(socket: str, name: str) -> tuple[dict[str, Any], bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket)) as http:
        async with http.post(f"http://m/1.0/instances/{name}/exec", json={
                "command": ["sh"], "interactive": True, "wait-for-websocket": True,
                "width": 80, "height": 24}) as resp:
            doc = await resp.json()
        op, fds = doc["operation"], doc["metadata"]["metadata"]["fds"]
        sockets = {fd: await http.ws_connect(f"http://m{op}/websocket?secret={secret}")
                   for fd, secret in fds.items()}
        await sockets["0"].send_bytes(b"stty size; hostname; exit 3\n")
        seen = b""
        async for msg in sockets["0"]:
            seen += msg.data
        async with http.get(f"http://m{op}/wait?timeout=30") as resp:
            final = (await resp.json())["metadata"]
        for ws in sockets.values():
            await ws.close()
        return final, seen


def test_an_interactive_exec_through_another_member(members: list[DaemonProcess],
                                                    hosted: str) -> None:
    final, seen = asyncio.run(asyncio.wait_for(
        _interactive(str(members[0].socket), hosted), 60))
    assert final["metadata"]["return"] == 3
    assert b"24 80" in seen and hosted.encode() in seen
