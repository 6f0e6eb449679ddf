"""/1.0/events carries lifecycle and operation events; /1.0/operations lists and waits."""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp
import pytest

from devtools.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


async def _collect(socket_path: str, types: str, action: asyncio.Event,
                   seconds: float) -> list[dict]:
    events: list[dict] = []
    connector = aiohttp.UnixConnector(path=socket_path)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(f"http://corral/1.0/events?type={types}") as ws:
            action.set()
            try:
                async with asyncio.timeout(seconds):
                    async for msg in ws:
                        events.append(json.loads(msg.data))
            except TimeoutError:
                pass
    return events


def test_events_stream_lifecycle_and_operations(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    name = f"ev{secrets.token_hex(2)}"

    async def scenario() -> list[dict]:
        ready = asyncio.Event()
        collector = asyncio.create_task(_collect(str(daemon.socket), "lifecycle,operation",
                                                 ready, 8.0))
        await ready.wait()
        await asyncio.to_thread(api.ok, "POST", "/1.0/instances",
                                {"name": name, "source": {"alias": "busybox"}})
        await asyncio.to_thread(api.ok, "DELETE", f"/1.0/instances/{name}")
        return await collector

    events = asyncio.run(scenario())
    actions = [e["metadata"]["action"] for e in events if e["type"] == "lifecycle"]
    assert "instance-created" in actions and "instance-deleted" in actions
    ops = [e for e in events if e["type"] == "operation"]
    assert {e["metadata"]["status"] for e in ops} >= {"Running", "Success"}
    assert all(e["location"] for e in events)


def test_operations_list_get_wait(daemon: DaemonProcess) -> None:
    api = Api(str(daemon.socket))
    name = f"op{secrets.token_hex(2)}"
    status, doc = api.call("POST", "/1.0/instances", {"name": name,
                                                      "source": {"alias": "busybox"}})
    assert status == 202 and doc["type"] == "async"
    op_url = doc["operation"]
    done = api.wait(op_url)
    assert done["status"] == "Success" and done["resources"]["instances"] == [
        f"/1.0/instances/{name}"]
    assert api.get(op_url)["id"] == done["id"]
    listing = api.get("/1.0/operations")
    assert any(op_url in urls for urls in listing.values())
    status, doc = api.call("DELETE", op_url)
    assert status == 400  # finished operations cannot be cancelled
    assert api.call("GET", "/1.0/operations/nope")[0] == 404
    api.ok("DELETE", f"/1.0/instances/{name}")
