"""Placement through the API on one member: concurrent launches never overcommit it."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from cluster.harness import DaemonProcess
from tests.integration.api import Api

pytestmark = pytest.mark.real


def test_concurrent_launches_fill_a_member_exactly_and_no_further(
        fresh_daemon: DaemonProcess) -> None:
    api = Api(str(fresh_daemon.socket))
    member = api.get("/1.0/cluster/members?recursion=1")[0]["server_name"]
    api.ok("PATCH", f"/1.0/cluster/members/{member}",
           {"config": {"scheduler.capacity.memory": "1GiB"}})

    def launch(index: int) -> tuple[int, dict]:
        return api.call("POST", "/1.0/instances", {
            "name": f"p{index}", "source": {"type": "image", "alias": "busybox"},
            "config": {"limits.memory": "256MiB"}})

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(launch, range(8)))
    accepted = [doc for status, doc in results if status < 400]
    refused = [doc for status, doc in results if status >= 400]
    assert len(accepted) == 4, results  # 4 x 256 MiB = the 1 GiB the member offers
    assert all("free memory" in doc["error"] and "256 MiB" in doc["error"] for doc in refused)
    for status, doc in results:
        if status < 400:
            api.wait(doc["operation"])
    assert len(api.get("/1.0/instances")) == 4
    # Growing one of them past the member's capacity is refused, and changes nothing.
    first = next(f"p{i}" for i, (status, _) in enumerate(results) if status < 400)
    inst = api.get(f"/1.0/instances/{first}")
    status, doc = api.call("PATCH", f"/1.0/instances/{first}",
                           {"config": {"limits.memory": "512MiB"}})
    assert status == 400 and "free" in doc["error"]
    assert api.get(f"/1.0/instances/{first}")["config"] == inst["config"]
    explain = api.call("POST", "/1.0/instances?placement=explain", {
        "name": "more", "source": {"type": "image", "alias": "busybox"},
        "config": {"limits.memory": "256MiB"}})[1]["metadata"]
    assert explain["member"] is None and "free memory" in explain["error"]
